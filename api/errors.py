"""The one error path of every route: each error becomes ``{"message": ...}`` with the status it carries.

Handlers sit on the Flask app, so the MAX routes (Flask-RESTX), the web page and the operations routes answer
alike, unknown routes included. Flask-RESTX's own handler is bypassed: it logs every status of 500 and above
with a traceback, so that each deliberate 503 (busy, loading, time limit) would read as a crash. Here only an
unexpected exception is logged with its traceback; the others are what the access line records (status,
model and message).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request
from flask.typing import ResponseReturnValue
from flask_restx import Api
from flask_restx.mask import MaskError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import RequestRedirect

from config import Settings
from api import observability
from core.errors import InvalidInput, Reason, ServiceError, TooLarge, Unavailable, UploadTooLarge
from core.options import quoted

log = logging.getLogger(__name__)
UNSUPPORTED_MEDIA_TYPE = 415


class FormTooLarge(TooLarge):
    """The form has too many parts, or a text field or a part's headers past Werkzeug's limits."""

    reason = Reason.FORM_TOO_LARGE


class JsonApi(Api):
    """Flask-RESTX without its error handling: errors take the app's path like any other route's."""

    def error_router(self, original_handler: Callable[[Exception], ResponseReturnValue],
                     e: Exception) -> ResponseReturnValue:
        return original_handler(e)


def error_body(error: Exception) -> tuple[dict[str, str], int, dict[str, str]]:
    """The JSON body, status and headers for any exception a request can raise."""
    from api import service

    if isinstance(error, ServiceError):
        headers = {"Retry-After": str(retry_after(error, service().settings))} if isinstance(error, Unavailable) else {}
        return {"message": error.message}, error.status, headers
    if isinstance(error, NotFound):
        return {"message": f"no route {request.method} {request.path}: the API is described at /"}, 404, {}
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return ({"message": f"{request.method} is not allowed on {request.path}: it takes {allowed}"}, 405,
                _own_headers(error))
    if isinstance(error, HTTPException):
        return {"message": error.description or error.name}, error.code or 500, _own_headers(error)
    log.exception("unexpected error")
    return {"message": "internal error; the request was logged"}, 500, {}


def retry_after(error: Unavailable, settings: Settings) -> int:
    """The seconds a 503 tells the client to wait (its Retry-After)."""
    return error.retry_after(settings.retry_after_s, settings.queue_wait_s)


def _own_headers(error: HTTPException) -> dict[str, str]:
    """The headers an HTTP error carries (a 405's Allow, which HTTP requires), less its HTML Content-Type."""
    return {name: value for name, value in error.get_headers() if name.lower() != "content-type"}


def upload_too_large(error: RequestEntityTooLarge) -> UploadTooLarge | FormTooLarge:
    """413 naming the limit that was hit: the whole upload's size, or one of Werkzeug's form limits."""
    limit = request.max_content_length  # set from MAX_UPLOAD_BYTES by create_app
    length = request.content_length
    if length is None or limit is None or length > limit:
        size = f"{length} bytes" if length else "longer than that (chunked)"
        return UploadTooLarge(f"the upload is too large: the limit is {limit} bytes (MAX_UPLOAD_BYTES) and the "
                              f"request is {size}")
    return FormTooLarge(f"the form is too large: at most {request.max_form_parts} parts, and "
                        f"{request.max_form_memory_size} bytes in a text field or a part's headers (its file name); "
                        f"send the image in the file field 'image' and the options as short fields")


def unreadable_field_mask(error: MaskError) -> InvalidInput:
    """400 for an X-Fields header that Flask-RESTX cannot parse or apply: it would otherwise be a 500.

    /model/metadata honours the header, as IBM's MAX did, to return only the fields it names.
    """
    header = current_app.config["RESTX_MASK_HEADER"]
    return InvalidInput(f"the {header} header {quoted(request.headers.get(header, ''))} is not a field mask of "
                        f"this answer ({error}): name fields of /model/metadata, e.g. {header}: id,models{{id}}, "
                        f"or send no {header}")


def _answer(error: Exception):
    if isinstance(error, RequestEntityTooLarge):
        error = upload_too_large(error)
    if isinstance(error, MaskError):
        error = unreadable_field_mask(error)
    body, status, headers = error_body(error)
    g.error_message = body["message"]  # for the access line
    if isinstance(error, ServiceError) and error.reason:
        observability.note_refusal(error.reason)
    return body, status, headers


def refuse_encoded_bodies() -> tuple[dict[str, str], int] | None:
    """415 for a compressed request body: the decoders would read gzip as a broken image."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    message = (f"the request body is encoded ({encoding}); send it uncompressed (no Content-Encoding): "
               f"images are compressed already")
    g.error_message = message
    return {"message": message}, UNSUPPORTED_MEDIA_TYPE


def redirect_to_the_route() -> tuple[dict[str, str], int, dict[str, str]] | None:
    """Werkzeug's redirect of a path with repeated slashes (``/model//predict``), to the route's path alone.

    Werkzeug writes the whole URL into Location, with the host from the request's Host header, which the client
    chooses: behind a cache that keys on the path, one request would send every later client to another site.
    Flask returns such a redirect without the error handlers, as HTML; here it is JSON like any other answer.
    """
    moved = request.routing_exception
    if not isinstance(moved, RequestRedirect):
        return None
    target = urlsplit(moved.new_url)._replace(scheme="", netloc="")
    message = f"{request.path} is not a route; the route is {target.path}"
    g.error_message = message
    return {"message": message}, moved.code, {"Location": target.geturl()}


def register_error_handlers(app: Flask) -> None:
    app.before_request(refuse_encoded_bodies)
    app.before_request(redirect_to_the_route)
    app.register_error_handler(ServiceError, _answer)
    app.register_error_handler(HTTPException, _answer)
    app.register_error_handler(Exception, _answer)
