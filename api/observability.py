"""Per-request bookkeeping: request ids, one JSON log line per request (core/logs.py), request metrics, security headers, CORS.

Installed on the Flask app as before/after/teardown hooks, so that every route (the MAX contract,
the web page, the operations routes) is covered in the same way.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from flask import Flask, Response, g, request

import monitoring
from config import REQUEST_ID_PATTERN, Settings
from core.errors import Reason, refusal_statuses
from core.options import OptionContext

ACCESS_LOG = logging.getLogger("superres.access")
REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTED_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
# Probes and scrapes come every few seconds: logged at DEBUG only (a model that fails to load is logged as an error).
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
UNMATCHED_ROUTE = "unmatched"
# Every label of the request metrics takes its values from a fixed set: a client cannot add series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
# The page loads its script, style and pictures from this service only (pictures it makes itself are data: and
# blob: URLs; its markup has style attributes). The Swagger UI also runs the inline script that starts it.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self' data: blob:; "
               "style-src 'self' 'unsafe-inline'; "
               "frame-ancestors 'self'; base-uri 'self'; form-action 'self'")
SWAGGER_POLICY = PAGE_POLICY + "; script-src 'self' 'unsafe-inline'"
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, X-Request-ID",
    "Access-Control-Expose-Headers": "X-Request-ID, X-Model, X-Input-Size, X-Output-Size, Retry-After",
    "Access-Control-Max-Age": "600",
}
def install(app: Flask, settings: Settings) -> None:
    """Add the hooks to ``app``; CORS headers only when ``settings.cors_enable`` or ``settings.cors_origins``."""
    app.before_request(_start)
    app.after_request(_finish)
    app.after_request(_secure)
    app.teardown_request(_leave)
    origins = frozenset(origin.strip() for origin in settings.cors_origins.split(",") if origin.strip())
    if settings.cors_enable or origins:
        app.after_request(lambda response: _allow_cross_origin(response, origins))


@dataclass(frozen=True)
class Outcome:
    """What a request served, from the route's own result (never read back from response headers), or why it was
    refused (the error's own reason, never read back from its message)."""

    model: str | None = None
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    refusal: Reason | None = None


def refusal_series(app: Flask) -> list[tuple[str, int, Reason]]:
    """Every (route, status, reason) superres_refusals_total can count: each reason on each route that takes an
    upload (POST), as every refusal comes from reading, planning or running an upload."""
    statuses = refusal_statuses()
    return [(rule.rule, status, reason) for rule in app.url_map.iter_rules() if "POST" in (rule.methods or ())
            for reason, status in statuses.items()]


def note_model(context: OptionContext) -> None:
    """The model a request asks for (the default where it names none), for its access line and metrics, also when
    its options turn out invalid; unknown names stay out."""
    name = request.values.get("model") or context.default_model
    if name in context.models:
        g.outcome = Outcome(model=name)


def note_result(model: str, input_size: tuple[int, int], output_size: tuple[int, int]) -> None:
    g.outcome = Outcome(model, input_size, output_size)


def note_refusal(reason: Reason) -> None:
    """Why the request is answered 413 or 503, for superres_refusals_total; the model it asked for stays."""
    g.outcome = replace(g.get("outcome", Outcome()), refusal=reason)


def finish_later() -> Callable[[int, Outcome, int | None, str | None], None]:
    """For a streamed answer: its access line and metrics come when the stream ends, with its real duration.

    Flask runs after-request hooks before the body is read, so the route calls what this returns at the end of
    the stream, with the status, outcome, size and error message the stream ended with.
    """
    g.deferred = True
    line = _line_fields()
    route, method, started = g.route, request.method, g.started

    def finish(status: int, outcome: Outcome, output_bytes: int | None, error: str | None) -> None:
        seconds = time.perf_counter() - started
        _observe(route, method, status, outcome, seconds)
        _log(route, status, seconds, outcome, output_bytes, error, line)
        monitoring.IN_FLIGHT.labels(route).dec()
    return finish


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
    response.headers[REQUEST_ID_HEADER] = g.request_id
    if g.get("deferred") and response.is_streamed:
        return response
    g.deferred = False  # the route failed before its stream began: this answer is the whole request
    seconds = time.perf_counter() - g.started
    outcome = g.get("outcome", Outcome())
    _observe(g.route, request.method, response.status_code, outcome, seconds)
    # The header only: calculate_content_length() would drain a streamed body.
    _log(g.route, response.status_code, seconds, outcome, response.content_length, g.get("error_message"),
         _line_fields())
    return response


def _observe(route: str, method: str, status: int, outcome: Outcome, seconds: float) -> None:
    model = outcome.model or ""
    monitoring.observe_request(route, method if method in METHODS else OTHER_METHOD, model, status, seconds)
    if outcome.refusal:
        monitoring.observe_refusal(route, status, outcome.refusal)
    if status == 200 and outcome.input_size and outcome.output_size:
        monitoring.observe_pixels(model, _area(outcome.input_size), _area(outcome.output_size))


def _line_fields() -> dict[str, object]:
    """The parts of the access line known from the request alone."""
    return {
        "request_id": g.request_id,
        "method": request.method,
        "path": request.path,
        "input_bytes": request.content_length,
        # Behind serve.py gunicorn listens on a Unix socket (no peer address) that only nginx can reach.
        "remote_addr": request.remote_addr or request.headers.get("X-Real-IP"),
    }


def _log(route: str, status: int, seconds: float, outcome: Outcome, output_bytes: int | None, error: str | None,
         fields: dict[str, object]) -> None:
    """One line per request; a deliberate 4xx or 503 carries its message, and no traceback."""
    quiet = route in QUIET_ROUTES and status < 500
    ACCESS_LOG.log(logging.DEBUG if quiet else logging.INFO, "request", extra={
        **fields,
        "route": route,
        "status": status,
        # Seconds, as nginx's own line ($request_time) and the latency histogram give them: one unit for a query.
        "duration_s": round(seconds, 3),
        "model": outcome.model,
        "input_size": _size(outcome.input_size),
        "output_size": _size(outcome.output_size),
        "output_bytes": output_bytes,
        "error": error,
    })


def _leave(error: BaseException | None) -> None:
    # Teardown runs even when a hook failed, so the in-flight gauge cannot drift upwards; a stream's own
    # finish counts it down when the stream ends.
    if "route" in g and not g.get("deferred"):
        monitoring.IN_FLIGHT.labels(g.route).dec()


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _size(size: tuple[int, int] | None) -> str | None:
    return None if size is None else f"{size[0]}x{size[1]}"


def _secure(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith("/app"):
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    elif request.path == "/" or request.path.startswith("/swaggerui"):
        response.headers["Content-Security-Policy"] = SWAGGER_POLICY
    return response


def _allow_cross_origin(response: Response, origins: frozenset[str]) -> Response:
    """``*`` when no origins are listed (CORS_ENABLE alone, as the original); else the caller's origin if listed."""
    if not origins:
        response.headers.update(CORS_HEADERS)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin in origins:
        response.headers.update(CORS_HEADERS)
        response.headers["Access-Control-Allow-Origin"] = origin
    return response
