"""GET /model/metadata: what this server is and which models it offers."""
from __future__ import annotations

from flask_restx import Resource, fields

from api import DESCRIPTION, namespace, service

model_entry = namespace.model("ModelEntry", {
    "id": fields.String(description="Value for the predict form's model field"),
    "title": fields.String,
    "use_when": fields.String(description="When to choose this model"),
    "architecture": fields.String,
    "weights": fields.String(description="Where the weights come from"),
    "license": fields.String(description="Licence of the weights"),
    "parameters": fields.Integer(description="Trainable and fixed parameters; null until loaded"),
    "precision": fields.String(description="Arithmetic the model runs in: f32 or bf16; null until loaded"),
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
    "limits": fields.Raw(description="Upload and pixel limits, scales and formats"),
})


@namespace.route("/metadata")
class Metadata(Resource):
    @namespace.marshal_with(metadata)
    def get(self):
        """Return the model's metadata and the models this server offers."""
        settings = service().settings
        return {
            "id": "max-image-super-resolution-generator",
            "name": "MAX Image Super-Resolution Generator",
            "description": DESCRIPTION,
            "type": "Image-To-Image Translation",
            "source": "https://github.com/IBM/MAX-Image-Resolution-Enhancer",
            "license": "Apache-2.0",
            "default_model": settings.default_model,
            "models": service().registry.describe(),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_input_pixels": settings.max_input_pixels,
                "max_output_pixels": settings.max_output_pixels,
                "scales": [2, 3, 4],
                "formats": ["png", "jpeg", "webp"],
            },
        }
