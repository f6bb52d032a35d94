"""One place that turns every error into ``{"message": ...}`` with the status it carries."""
from __future__ import annotations

import logging

from flask_restx import Api
from werkzeug.exceptions import HTTPException

from core.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)


def error_body(error: Exception) -> tuple[dict[str, str], int, dict[str, str]]:
    """The JSON body, status and headers for any exception a request can raise."""
    from api import service

    if isinstance(error, ServiceError):
        headers = {"Retry-After": str(service().settings.retry_after_s)} if isinstance(error, Unavailable) else {}
        return {"message": error.message}, error.status, headers
    if isinstance(error, HTTPException):
        return {"message": error.description or error.name}, error.code or 500, {}
    log.exception("unexpected error")
    return {"message": "internal error; the request was logged"}, 500, {}


def register_error_handlers(api: Api) -> None:
    @api.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        return error_body(error)
