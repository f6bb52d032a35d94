"""The web page at /app, its one streaming endpoint, POST /app/upscale, and GET /app/sizes, whose answer gives
the page every size it shows or checks (and what the server would refuse) before the image is sent.

The page uploads an image and reads back newline-delimited JSON events:
``start`` (the tile count, known before any work), ``progress`` after each
batch of tiles, ``heartbeat`` while waiting, then ``result`` (the image in
base64) or ``error`` (a 503's with ``retry_after_s``). The model runs at any
strength, 0 included: the result carries its output for the page's slider.
The upscale runs in a thread feeding a queue; when the
client goes away, writing to it fails, the server closes the generator, and
the next per-tile callback raises ``Cancelled`` so the work stops at the next
tile. Nothing is kept between requests, so any gunicorn worker can answer.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from flask import Blueprint, Response, redirect, request, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from api import observability
from api.errors import retry_after
from api.form import read_form
from api.predict import CLIENT_CLOSED_REQUEST
from config import Settings
from core.errors import (Cancelled, EnsembleTooLarge, InvalidInput, OutputTooLarge, Reason, ServiceError,
                         Unavailable)
from core.options import MAX_TARGET_SIDE, parse_options, quoted
from core.pipeline import Progress
from core.plan import Plan
from core.service import Service

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
# Short enough that a client that has gone away is noticed within a second or two,
# even while one batch of tiles takes longer than that.
HEARTBEAT_S = 0.5

# The page's files, each by name. A static route for any path under /app would also take GET /app/upscale and
# answer 404 for a route that exists and takes POST, where a wrong method gets a 405 with Allow.
PAGE_FILES = tuple(sorted(path.name for path in WEB_ROOT.iterdir() if path.is_file()))

blueprint = Blueprint("web", __name__, url_prefix="/app")


@blueprint.get("")
def page_redirect() -> BaseResponse:
    return redirect("/app/")


@blueprint.get("/")
def page() -> Response:
    return send_from_directory(WEB_ROOT, "index.html")


@blueprint.get(f"/<any({', '.join(PAGE_FILES)}):name>")
def page_file(name: str) -> Response:
    return send_from_directory(WEB_ROOT, name)


@blueprint.post("/upscale")
def upscale() -> Response:
    """Multipart like /model/predict; answers ``application/x-ndjson`` events."""
    from api import service

    form = read_form(request)  # as /model/predict reads it, with the same schema
    current = service()
    context = current.option_context
    observability.note_model(context)
    options = parse_options(form.options, context, with_layers=True)
    # 400, 413 and 503 before streaming, not error events in it. The layers let the page show another strength
    # at once, without running the model again.
    plan = current.prepare(form.image, options, with_layers=True)
    return Response(_events(current, plan, observability.finish_later()), mimetype="application/x-ndjson",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@blueprint.get("/sizes")
def sizes() -> dict[str, object]:
    """The sizes an upscale would make for an image of ``input_width`` x ``input_height`` with the query's options,
    before anything is sent: the output's; ``refusal``, the 413 that /app/upscale would answer for
    MAX_OUTPUT_PIXELS (each model pass's result, with fit=cover that of the part of the input the box needs) or
    MAX_ENSEMBLE_PIXELS (the pixels the ensemble runs), or null; and ``denoise_levels``, the model's levels at the
    native scale this enlargement runs. A denoise level the model lacks there is the ``refusal`` (the upscale's
    400), with no sizes: the page offers the levels and asks again. The page shows and checks every size with
    this answer, so that its sizes and warnings are the server's own arithmetic and words."""
    from api import service

    current = service()
    width, height = (_whole_number(name) for name in ("input_width", "input_height"))
    options = parse_options(request.args, current.option_context, with_layers=True)
    levels = current.denoise_levels(width, height, options)
    try:
        _, output = current.plan_sizes(width, height, options)
    except InvalidInput as error:
        if options.denoise in levels:
            raise
        return {"width": None, "height": None, "refusal": error.message, "denoise_levels": list(levels)}
    try:
        current.check_pixels(output, options, with_layers=True)
        refusal = None
    except (OutputTooLarge, EnsembleTooLarge) as error:
        refusal = error.message
    return {"width": output.output[0], "height": output.output[1], "refusal": refusal,
            "denoise_levels": list(levels)}


def _whole_number(name: str) -> int:
    text = request.args.get(name, "")
    if not text.isdigit() or not 1 <= int(text) <= MAX_TARGET_SIDE:
        raise InvalidInput(f"{name} must be a whole number from 1 to {MAX_TARGET_SIDE}, not {quoted(text)}")
    return int(text)


def _events(current: Service, plan: Plan,
            finish: Callable[[int, observability.Outcome, int | None, str | None], None]) -> Iterator[bytes]:
    events: queue.Queue[dict] = queue.Queue()
    # The reason of _run's error event, by the event's id: counted where that event ends the stream (a client that
    # left at the same moment ends it with another), and not sent.
    refused: dict[int, Reason] = {}
    last: dict = {"event": "error", "status": CLIENT_CLOSED_REQUEST, "message": "the client closed the connection"}
    sent = 0
    stop = threading.Event()
    started = time.monotonic()

    def on_progress(done: int, tiles: int) -> None:
        if stop.is_set():
            raise Cancelled(f"cancelled by the client after {done} of {tiles} tiles")
        if tiles:  # 0 before decoding: nothing to show yet
            events.put({"event": "progress", "done": done, "total": tiles, "elapsed_s": _since(started)})

    worker = threading.Thread(target=_run, args=(current, plan, on_progress, events, started, refused),
                              name="web-upscale", daemon=True)
    worker.start()
    try:
        for event in _stream(events, plan.tile_count, started):
            for piece in _line(event):
                sent += len(piece)
                yield piece
            if event["event"] in ("result", "error"):
                last = event
    finally:
        # Reached on completion and when the server closes the stream because the client left.
        stop.set()
        finish(*_stream_outcome(last, plan.network.name, refused), sent, last.get("message"))


def _stream(events: queue.Queue, total: int, started: float) -> Iterator[dict]:
    """The start event, progress and heartbeats, up to and including the result or the error."""
    yield {"event": "start", "done": 0, "total": total, "elapsed_s": 0.0}
    while True:
        try:
            event = events.get(timeout=HEARTBEAT_S)
        except queue.Empty:
            yield {"event": "heartbeat", "elapsed_s": _since(started)}
            continue
        yield event
        if event["event"] in ("result", "error"):
            return


def _stream_outcome(last: dict, model: str, refused: dict[int, Reason]) -> tuple[int, observability.Outcome]:
    """The status and outcome a stream ended with, from its last event (the result's own sizes), and the reason
    of a refusal that ended it."""
    if last["event"] != "result":
        return last["status"], observability.Outcome(model=model, refusal=refused.get(id(last)))
    return 200, observability.Outcome(last["model"], (last["input_width"], last["input_height"]),
                                      (last["width"], last["height"]))


def _run(current: Service, plan: Plan, on_progress: Progress, events: queue.Queue, started: float,
         refused: dict[int, Reason]) -> None:
    try:
        result = current.run(plan, on_progress)
    except Cancelled as cancelled:
        log.info("web upscale stopped: %s", cancelled)
        events.put({"event": "error", "status": 499, "message": str(cancelled)})
        return
    except ServiceError as error:
        event = _error_event(error, current.settings)
        if error.reason:
            refused[id(event)] = error.reason  # before the event is put: the stream reads it after the event
        events.put(event)
        return
    except Exception:  # noqa: BLE001 - the page gets a message, the log the traceback
        log.exception("web upscale failed")
        events.put({"event": "error", "status": 500, "message": "internal error; the request was logged"})
        return
    events.put({
        "event": "result", "elapsed_s": _since(started), "model": result.model,
        "content_type": result.content_type, "width": result.width, "height": result.height,
        "input_width": result.input_width, "input_height": result.input_height,
        "strength": plan.options.strength, "image": base64.b64encode(result.data),
        "layers": {name: base64.b64encode(layer) for name, layer in result.layers.items()},
    })


def _error_event(error: ServiceError, settings: Settings) -> dict:
    """The stream's last event for an error; a 503 says when to try again, as its Retry-After header would have
    said had the error come before the stream began."""
    event = {"event": "error", "status": error.status, "message": error.message}
    if isinstance(error, Unavailable):
        event["retry_after_s"] = retry_after(error, settings)
    return event


def _since(started: float) -> float:
    return round(time.monotonic() - started, 2)


def _line(event: dict) -> list[bytes]:
    """An event as one JSON line, in pieces. A result's images (base64 bytes, which JSON holds as they are) stay
    their own pieces: joining them into one string would take twice their size again (core/memory.LAYER_COPIES)."""
    if event["event"] != "result":
        return [json.dumps(event).encode() + b"\n"]
    fields = json.dumps({key: value for key, value in event.items() if key not in ("image", "layers")}).encode()
    pieces = [fields[:-1], b', "image": "', event["image"], b'", "layers": {']
    for index, (name, data) in enumerate(event["layers"].items()):
        pieces += [b", " * bool(index), json.dumps(name).encode(), b': "', data, b'"']
    return [*pieces, b"}}\n"]
