"""Per-request bookkeeping: request ids, one JSON log line per request, request metrics and CORS.

Installed on the Flask app as before/after/teardown hooks, so that every route (the MAX contract,
the web page, the operations routes) is covered in the same way.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from flask import Flask, Response, g, request

from api import monitoring
from config import Settings

ACCESS_LOG = logging.getLogger("superres.access")
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own id is kept (so that it can follow a request through proxies) only if it is short and plain.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes come every few seconds: logged at DEBUG only (a model that fails to load is logged as an error).
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
UNMATCHED_ROUTE = "unmatched"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, X-Request-ID",
    "Access-Control-Expose-Headers": "X-Request-ID, X-Model, X-Input-Size, X-Output-Size, Retry-After",
    "Access-Control-Max-Age": "600",
}
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field of the record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every log record of the process to stderr as a JSON line (once per process)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


def install(app: Flask, settings: Settings) -> None:
    """Add the hooks to ``app``; CORS headers only when ``settings.cors_enable``."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_leave)
    if settings.cors_enable:
        app.after_request(_allow_cross_origin)


def _route() -> str:
    # The rule, not the path, keeps the metrics' label values few.
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


def _request_id() -> str:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    return offered if _ACCEPTED_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


def _start() -> None:
    g.request_id = _request_id()
    g.started = time.perf_counter()
    g.route = _route()
    monitoring.IN_FLIGHT.labels(g.route).inc()


def _finish(response: Response) -> Response:
    if "started" not in g:  # another before_request hook answered before ours ran
        _start()
    seconds = time.perf_counter() - g.started
    response.headers[REQUEST_ID_HEADER] = g.request_id
    model = response.headers.get("X-Model", "")
    input_size = response.headers.get("X-Input-Size")
    output_size = response.headers.get("X-Output-Size")
    monitoring.observe_request(g.route, request.method, model, response.status_code, seconds)
    if response.status_code == 200 and input_size and output_size:
        monitoring.observe_pixels(model, _pixels(input_size), _pixels(output_size))
    ACCESS_LOG.log(logging.DEBUG if g.route in QUIET_ROUTES else logging.INFO, "request", extra={
        "request_id": g.request_id,
        "method": request.method,
        "path": request.path,
        "route": g.route,
        "status": response.status_code,
        "duration_ms": round(seconds * 1000, 1),
        "model": model or None,
        "input_size": input_size,
        "output_size": output_size,
        "input_bytes": request.content_length,
        # The header only: calculate_content_length() would drain a streamed body (the web page's progress).
        "output_bytes": response.content_length,
        # Behind serve.py gunicorn listens on a Unix socket (no peer address) that only nginx can reach.
        "remote_addr": request.remote_addr or request.headers.get("X-Real-IP"),
    })
    return response


def _leave(error: BaseException | None) -> None:
    # Teardown runs even when a hook failed, so the in-flight gauge cannot drift upwards.
    if "route" in g:
        monitoring.IN_FLIGHT.labels(g.route).dec()


def _pixels(size: str) -> int:
    width, _, height = size.partition("x")
    return int(width) * int(height)


def _allow_cross_origin(response: Response) -> Response:
    response.headers.update(CORS_HEADERS)
    return response
