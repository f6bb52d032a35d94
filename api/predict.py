"""POST /model/predict: an image in, the upscaled image out."""
from __future__ import annotations

import logging
import socket
import ssl

from flask import Response, request
from flask_restx import Resource
from flask_restx.reqparse import RequestParser
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from api import namespace, service
from api.errors import upload_too_large
from api.observability import note_model, note_result
from core.errors import Cancelled, InvalidInput
from core.containers import describe_accepted
from core.options import OPTIONS, Option, parse_options
from core.pipeline import Progress
from core.timing import Stages

log = logging.getLogger(__name__)
# nginx's code for "client closed the request": nobody reads it, but it marks the request in logs and metrics.
CLIENT_CLOSED_REQUEST = 499


class Documented:
    """An option's text as it arrives, with the Swagger schema of the option.

    Flask-RESTX only reads the form here; ``parse_options`` gives the values their types,
    so that the page's route, which shares it, answers the same value the same way.
    """

    def __init__(self, option: Option) -> None:
        self.__schema__ = option.swagger()

    def __call__(self, text: str) -> str:
        return text


def build_parser() -> RequestParser:
    """The form: the image, then one argument per option of the schema.

    The defaults are in the help, not in the schema: Swagger UI's "Try it out" sends every published default,
    and the defaults of scale and fit together are a 400 (scale goes with no width or height, fit only with
    both). A field not sent takes its default on the server all the same.
    """
    built = namespace.parser()
    built.add_argument("image", location="files", type=FileStorage, required=False,
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
    @namespace.response(400, "No image, an unreadable image, or an invalid option")
    @namespace.response(413, "The upload, the image or the output exceeds a limit")
    @namespace.response(503, "Busy or still loading; see Retry-After")
    def post(self):
        """Upscale an image 4x (any scale from 1 to 8, or to a width and height) and return it."""
        stages = Stages()
        with stages.time("upload"):  # werkzeug reads and parses the multipart body here
            upload: FileStorage | None = parse_arguments()["image"]
            data = None if upload is None else upload.read()
        if data is None:
            raise InvalidInput("no image: send the file as the multipart form field 'image'")
        context = service().option_context
        note_model(context)
        plan = service().prepare(data, parse_options(request.values, context))
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


def parse_arguments() -> dict:
    """The request's form (its options still text); a body over MAX_UPLOAD_BYTES is a 413."""
    try:
        return parser.parse_args()
    except RequestEntityTooLarge as error:
        raise upload_too_large(error) from error
    except BadRequest as error:
        raise InvalidInput(str(error.description)) from error


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
