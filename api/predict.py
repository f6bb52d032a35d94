"""POST /model/predict: an image in, the upscaled image out."""
from __future__ import annotations

import logging
import socket
import ssl

from flask import Response, request
from flask_restx import Resource, inputs
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from api import namespace, service
from api.errors import upload_too_large
from api.observability import note_model, note_result
from core.errors import Cancelled, InvalidInput
from core.images import OUTPUT_FORMATS, describe_accepted
from core.pipeline import SCALES, Progress, UpscaleOptions

log = logging.getLogger(__name__)
# nginx's code for "client closed the request": nobody reads it, but it marks the request in logs and metrics.
CLIENT_CLOSED_REQUEST = 499

parser = namespace.parser()
parser.add_argument("image", location="files", type=FileStorage, required=False,
                    help=f"The image to upscale ({describe_accepted()})")
parser.add_argument("model", location=("form", "args"), type=str, required=False,
                    help="Model id from /model/metadata (default: the server's default model)")
parser.add_argument("scale", location=("form", "args"), type=int, choices=SCALES, default=4,
                    help="Output scale: 4 from the network, 2 or 3 by a Lanczos downscale of its result")
parser.add_argument("format", location=("form", "args"), type=str, choices=tuple(OUTPUT_FORMATS), default="png",
                    help="Output format")
parser.add_argument("quality", location=("form", "args"), type=inputs.int_range(1, 100), default=90,
                    help="Quality for jpeg and webp, 1..100")
parser.add_argument("ensemble", location=("form", "args"), type=inputs.boolean, default=False,
                    help="Average the 8 flips and rotations: a little better, 8x slower")


@namespace.route("/predict")
class Predict(Resource):
    @namespace.expect(parser)
    @namespace.produces(["image/png", "image/jpeg", "image/webp"])
    @namespace.response(200, "The upscaled image")
    @namespace.response(400, "No image, an unreadable image, or an invalid option")
    @namespace.response(413, "The upload, the image or the output exceeds a limit")
    @namespace.response(503, "Busy or still loading; see Retry-After")
    def post(self):
        """Upscale an image 4x (or 2x, 3x) and return it."""
        args = parse_arguments()
        upload: FileStorage | None = args["image"]
        if upload is None:
            raise InvalidInput("no image: send the file as the multipart form field 'image'")
        options = UpscaleOptions(model=args["model"], scale=args["scale"], output_format=args["format"],
                                 quality=args["quality"], ensemble=args["ensemble"])
        note_model(options.model or service().settings.default_model, service().registry.names)
        try:
            result = service().upscale(upload.read(), options, on_progress=stop_when_client_leaves(request.environ))
        except Cancelled as cancelled:
            # Not an error of the server: the work stopped because nobody waits for it any more.
            log.info("predict stopped: %s", cancelled)
            return Response(status=CLIENT_CLOSED_REQUEST)
        note_result(result.model, (result.input_width, result.input_height), (result.width, result.height))
        return Response(result.data, mimetype=result.content_type, headers={
            "X-Model": result.model,
            "X-Input-Size": f"{result.input_width}x{result.input_height}",
            "X-Output-Size": f"{result.width}x{result.height}",
        })


# What each option accepts, for the message when a request sends something else.
ALLOWED = {
    "scale": "one of " + ", ".join(map(str, SCALES)),
    "format": "one of " + ", ".join(OUTPUT_FORMATS),
    "quality": "a whole number from 1 to 100",
    "ensemble": "true or false",
}


def parse_arguments() -> dict:
    """The request's options; a bad one is a 400 naming the field, the value sent and the values allowed."""
    try:
        return parser.parse_args()
    except RequestEntityTooLarge as error:
        raise upload_too_large(error) from error
    except BadRequest as error:
        fields = (getattr(error, "data", None) or {}).get("errors") or {}
        problems = [f"{name} must be {ALLOWED[name]}, not {request.values.get(name)!r}"
                    if name in ALLOWED else f"{name}: {text}" for name, text in fields.items()]
        raise InvalidInput("; ".join(problems) or str(error.description)) from error


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
