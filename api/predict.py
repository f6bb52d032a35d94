"""POST /model/predict: an image in, the upscaled image out."""
from __future__ import annotations

import logging
import socket
import ssl

from flask import Response, request
from flask_restx import Resource
from flask_restx.reqparse import RequestParser
from werkzeug.datastructures import FileStorage

from api import namespace, service
from api.errors import UNSUPPORTED_MEDIA_TYPE
from api.form import IMAGE_FIELD, read_form
from api.observability import note_model, note_result
from core.errors import Cancelled
from core.containers import describe_accepted
from core.options import OPTIONS, Option, parse_options
from core.pipeline import Progress
from core.timing import Stages

log = logging.getLogger(__name__)
# nginx's code for "client closed the request": nobody reads it, but it marks the request in logs and metrics.
CLIENT_CLOSED_REQUEST = 499


class Documented:
    """The Swagger schema of an option, for the parser that documents the form.

    The parser documents only: ``api.form.read_form`` reads the form and ``parse_options`` gives the values their
    types, as on the page's route, so that both answer the same form the same way.
    """

    def __init__(self, option: Option) -> None:
        self.__schema__ = option.swagger()


def build_parser() -> RequestParser:
    """The form as Swagger shows it: the image, then one argument per option of the schema.

    The defaults are in the help, not in the schema: Swagger UI's "Try it out" sends every published default,
    and the defaults of scale and fit together are a 400 (scale goes with no width or height, fit only with
    both). A field not sent takes its default on the server all the same.
    """
    built = namespace.parser()
    # Required, as in the original's document: a request without it is always a 400.
    built.add_argument(IMAGE_FIELD, location="files", type=FileStorage, required=True,
                       help=f"The image to upscale ({describe_accepted()})")
    for option in OPTIONS:
        built.add_argument(option.name, location=("form", "args"), type=Documented(option), required=False,
                           help=f"{option.help} (default: {option.default_words})")
    return built


parser = build_parser()


@namespace.route("/predict")
class Predict(Resource):
    @namespace.expect(parser)
    @namespace.produces(["image/png", "image/jpeg", "image/webp"])
    @namespace.response(200, "The upscaled image")
    @namespace.response(400, "No image, a form or an image that cannot be read, or an invalid option")
    @namespace.response(413, "The upload, the image or the output exceeds a limit")
    @namespace.response(UNSUPPORTED_MEDIA_TYPE, "A compressed request body (any Content-Encoding but identity)")
    @namespace.response(503, "Busy or still loading; see Retry-After")
    def post(self) -> Response:
        """Upscale an image 4x (any scale from 1 to 8, or to a width and height) and return it."""
        stages = Stages()
        with stages.time("upload"):  # werkzeug reads and parses the multipart body here
            form = read_form(request)
        context = service().option_context
        note_model(context)
        plan = service().prepare(form.image, parse_options(form.options, context), stages=stages)
        try:
            result = service().run(plan, on_progress=stop_when_client_leaves(request.environ), stages=stages)
        except Cancelled as cancelled:
            # Not an error of the server: the work stopped because nobody waits for it any more.
            log.info("predict stopped: %s", cancelled)
            return Response(status=CLIENT_CLOSED_REQUEST)
        note_result(result.model, (result.input_width, result.input_height), (result.width, result.height))
        return Response(result.data, mimetype=result.content_type, headers={
            "X-Model": result.model,
            "X-Input-Size": f"{result.input_width}x{result.input_height}",
            "X-Output-Size": f"{result.width}x{result.height}",
            "Server-Timing": result.stages.server_timing(),
        })


def stop_when_client_leaves(environ: dict) -> Progress | None:
    """A per-tile callback that raises Cancelled once the client has closed its connection.

    gunicorn puts the request's socket in the environ; without one (Flask's
    test client) or over TLS (no peeking through the encryption) there is
    nothing to check and the request always runs to the end.
    """
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None

    def check(done: int, total: int) -> None:
        if peer_closed(sock):
            raise Cancelled(f"the client closed the connection after {done} of {total} tiles")
    return check


def peer_closed(sock: socket.socket) -> bool:
    """True once the peer has closed: a peek at the next byte returns end-of-stream.

    The request body has been read in full by now, so an open connection has
    nothing to read (EAGAIN) or a pipelined next request (data); neither is consumed.
    """
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset or already closed: the client is gone either way
        return True
