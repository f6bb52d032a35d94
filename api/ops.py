"""Operations routes: liveness, readiness and Prometheus metrics.

Plain Flask routes, not Flask-RESTX resources, so that the Swagger document stays the MAX contract (/model/*).
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

import monitoring
from api import service

blueprint = Blueprint("ops", __name__)


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    """Liveness: the process answers HTTP and its device can still run the networks (a GPU that failed for good
    leaves every later request failing: 503, so that the orchestrator restarts the process). Loading models
    does not make it unhealthy."""
    failure = service().device_failure
    if failure is not None:
        return jsonify(status="failed", reason=failure), 503
    return jsonify(status="ok"), 200


@blueprint.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 200 once every configured model is loaded and has run once, 503 before (or if one failed, or
    the device did)."""
    current = service()
    failure = current.device_failure
    body = {"ready": current.registry.ready and failure is None, "models": current.registry.states(),
            "device": current.device()}
    if failure is not None:
        body["device_failure"] = failure
    return jsonify(body), 200 if body["ready"] else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    monitoring.observe_device(service().device_usage())
    return Response(monitoring.render(), mimetype=None, content_type=monitoring.CONTENT_TYPE)


def register(app: Flask) -> None:
    """Add the routes, and feed the worker's inference slot into the queue and running gauges."""
    app.register_blueprint(blueprint)
    app.extensions["super_resolution"].slot.observe(monitoring.observe_slot)
