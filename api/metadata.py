"""GET /model/metadata: what this server is and which models it offers."""
from __future__ import annotations

from flask_restx import Resource, fields

from api import DESCRIPTION, namespace, service
from core.images import accepted_formats
from core.options import describe_options

model_entry = namespace.model("ModelEntry", {
    "id": fields.String(description="Value for the predict form's model field"),
    "title": fields.String,
    "use_when": fields.String(description="When to choose this model"),
    "architecture": fields.String,
    "weights": fields.String(description="Where the weights come from"),
    "license": fields.String(description="Licence of the weights"),
    "parameters": fields.Integer(description="Trainable and fixed parameters; null until loaded"),
    "scales": fields.List(fields.Integer, description="Native scales; a request runs the smallest that reaches its size (above the largest, a second pass)"),
    "denoise": fields.Raw(description="Denoise levels per native scale, e.g. {\"2\": [\"none\", \"conservative\"]}"),
    "precision": fields.String(description="Arithmetic the model runs in: f32, bf16 or fp16; null until loaded"),
    "precisions": fields.List(fields.String, description="A MODELS_DIR PyTorch file's: the arithmetics its "
                                                         "architecture runs in (f32, fp16, bf16); null otherwise"),
    "runtime": fields.String(description="A MODELS_DIR PyTorch file's: what runs it (OpenVINO, converted at load, "
                                         "or PyTorch, and why); null otherwise"),
    "window_bytes_per_pixel": fields.Integer(description="A MODELS_DIR model's: the worker memory a window takes "
                                                         "per input pixel, the larger of its measurement at load and "
                                                         "the hungriest built-in model's, which sizes its tiles; "
                                                         "null otherwise"),
    "state": fields.String(description="pending, loading, ready or failed: reason"),
    "default": fields.Boolean,
})

metadata = namespace.model("ModelMetadata", {
    "id": fields.String(required=True, description="Model identifier"),
    "name": fields.String(required=True),
    "description": fields.String(required=True),
    "type": fields.String(required=True),
    "source": fields.String(required=True),
    "license": fields.String(required=True),
    "default_model": fields.String(required=True),
    "models": fields.List(fields.Nested(model_entry)),
    "device": fields.Raw(description="Where the networks run: kind (cpu or cuda), name, memory_mib (a GPU's), "
                                     "runtime and backend"),
    "limits": fields.Raw(description="Upload and pixel limits: max_upload_bytes, max_input_pixels, "
                                     "max_output_pixels, and max_ensemble_pixels (the input's, for ensemble=true)"),
    "input_formats": fields.Raw(description="The image formats an upload may be in: format, content_type and the "
                                            "file name suffixes usual for it (the server goes by the first bytes)"),
    "options": fields.Raw(description="The predict form's options: name, type, range or choices, default, help "
                                      "(choices_by_model where the allowed values depend on the model)"),
})


@namespace.route("/metadata")
class Metadata(Resource):
    @namespace.marshal_with(metadata)
    @namespace.response(400, "An X-Fields header (the fields to return, e.g. id,models{id}) that is not a field "
                             "mask of this answer")
    def get(self) -> dict[str, object]:
        """Return the model's metadata and the models this server offers."""
        current = service()
        settings = current.settings
        return {
            "id": "max-image-super-resolution-generator",
            "name": "MAX Image Super-Resolution Generator",
            "description": DESCRIPTION,
            "type": "Image-To-Image Translation",
            "source": "https://github.com/IBM/MAX-Image-Resolution-Enhancer",
            "license": "Apache-2.0",
            "default_model": settings.default_model,
            "models": current.registry.describe(),
            "device": current.device(),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_input_pixels": settings.max_input_pixels,
                "max_output_pixels": settings.max_output_pixels,
                "max_ensemble_pixels": settings.max_ensemble_pixels,
            },
            "input_formats": accepted_formats(),
            "options": describe_options(current.option_context),
        }
