"""POST /model/predict: an image in, the upscaled image out."""
from __future__ import annotations

from flask import Response
from flask_restx import Resource, inputs
from werkzeug.datastructures import FileStorage

from api import namespace, service
from core.errors import InvalidInput
from core.images import OUTPUT_FORMATS, describe_accepted
from core.pipeline import SCALES, UpscaleOptions

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
        args = parser.parse_args()
        upload: FileStorage | None = args["image"]
        if upload is None:
            raise InvalidInput("no image: send the file as the multipart form field 'image'")
        options = UpscaleOptions(model=args["model"], scale=args["scale"], output_format=args["format"],
                                 quality=args["quality"], ensemble=args["ensemble"])
        result = service().upscale(upload.read(), options)
        return Response(result.data, mimetype=result.content_type, headers={
            "X-Model": result.model,
            "X-Input-Size": f"{result.input_width}x{result.input_height}",
            "X-Output-Size": f"{result.width}x{result.height}",
        })


