"""HTTP layer: Flask-RESTX namespaces that parse requests and delegate to ``core``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app
from flask_restx import Namespace

from core.service import Service

if TYPE_CHECKING:
    from api.errors import JsonApi

DESCRIPTION = (
    "Upscales a photo 4x with an SRGAN generator and real pretrained weights. "
    "POST an image to /model/predict and get the larger image back. "
    "A compatible successor of IBM's MAX Image Super-Resolution Generator."
)

namespace = Namespace("model", description="Model information and inference (the MAX contract)")


def service() -> Service:
    """The worker's service object, set up by ``create_app``."""
    return current_app.extensions["super_resolution"]


def build_api() -> JsonApi:
    import api.metadata  # noqa: F401 - registers its routes on the namespace
    import api.predict  # noqa: F401
    from api.errors import JsonApi

    rest_api = JsonApi(title="MAX Image Super-Resolution Generator", version="2.0",
              description=f"{DESCRIPTION} For people: the web page at [/app/](/app/).",
              doc="/", default_label="model")
    rest_api.add_namespace(namespace, path="/model")
    return rest_api
