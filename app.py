"""The Flask application; ``app`` is what gunicorn serves (``gunicorn app:app``)."""
from __future__ import annotations

from flask import Flask

import monitoring
from api import build_api, observability, ops
from api.errors import register_error_handlers
from api.form import FormRequest
from api.web import blueprint as web_blueprint
from config import Settings, load_settings
from core.logs import configure_logging
from core.service import Service


def create_app(settings: Settings | None = None, load_models: bool = True) -> Flask:
    """Build the app; models load in a background thread unless ``load_models`` is false."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    flask_app = Flask(__name__)
    flask_app.request_class = FormRequest
    flask_app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    flask_app.config["RESTX_MASK_SWAGGER"] = False
    flask_app.extensions["super_resolution"] = service = Service.create(settings)
    build_api().init_app(flask_app)
    register_error_handlers(flask_app)
    ops.register(flask_app)
    observability.install(flask_app, settings)
    flask_app.register_blueprint(web_blueprint)
    monitoring.configure(settings.longest_answer_s, observability.refusal_series(flask_app), service.registry.names)
    if load_models:
        service.start_loading(on_loaded=monitoring.observe_model_load)
    return flask_app


_served: Flask | None = None


def __getattr__(name: str) -> Flask:
    """``app`` is built on first access, so importing this module loads no model."""
    global _served
    if name != "app":
        raise AttributeError(name)
    if _served is None:
        _served = create_app()
    return _served
