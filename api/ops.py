"""Operations routes: liveness, readiness and Prometheus metrics.

Plain Flask routes, not Flask-RESTX resources, so that the Swagger document stays the MAX contract (/model/*).
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from api import monitoring, service

blueprint = Blueprint("ops", __name__)


@blueprint.get("/health")
def health() -> Response:
    """Liveness: the process answers HTTP. Loading models does not make it unhealthy."""
    return jsonify(status="ok")


@blueprint.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 200 once every configured model is loaded and has run once, 503 before (or if one failed)."""
    current = service()
    is_ready = current.registry.ready
    return jsonify(ready=is_ready, models=current.registry.states(), device=current.device()), 200 if is_ready else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    monitoring.observe_device(service().device_usage())
    return Response(monitoring.render(), mimetype=None, content_type=monitoring.CONTENT_TYPE)


def register(app: Flask) -> None:
    """Add the routes, and feed the worker's inference slot into the queue and running gauges."""
    app.register_blueprint(blueprint)
    app.extensions["super_resolution"].slot.observe(monitoring.observe_slot)
