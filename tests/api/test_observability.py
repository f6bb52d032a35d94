"""Every way a request can end leaves the worker's gauges where they were and is counted once, by its status."""
from __future__ import annotations

import ast
import io
import itertools
import json
import logging
import math
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

import api.errors  # defines FormTooLarge, whose reason the label set includes
import monitoring
from serve import front_series
from api import predict
from app import create_app
from core import memory, pipeline, shutdown
from core.admission import InferenceSlot
from core.errors import (Cancelled, DeviceFailed, NotReady, OutOfDeviceMemory, OverDeviceMemoryBudget, Reason, Refusal,
                         TimeLimitExceeded, refusal_statuses)
from core.service import Service
from harness.raw_http import png, wait_for
from tests.conftest import sample_bytes

ROUTES = ("/model/predict", "/app/upscale")
SOURCES = Path(__file__).resolve().parents[2]


def gauges(route: str) -> dict[str, float | None]:
    return {"running": REGISTRY.get_sample_value("superres_inference_running"),
            "queued": REGISTRY.get_sample_value("superres_inference_queued"),
            "in_flight": REGISTRY.get_sample_value("superres_http_requests_in_flight", {"route": route})}


def answered(route: str, status: int, model: str) -> float:
    return REGISTRY.get_sample_value("superres_http_requests_total", {
        "route": route, "method": "POST", "model": model, "status": str(status)}) or 0.0


def fail(error: BaseException):
    def run(*args, **kwargs):
        raise error
    return run


def client_gone(environ: dict):
    def check(done: int, total: int) -> None:
        raise Cancelled(f"the client closed the connection after {done} of {total} tiles")
    return check


# Each outcome: the form, what to break, and the status /model/predict answers.
OUTCOMES = {
    "no image": ({}, None, 400),
    "ensemble over its pixel limit": ({"image": png(600, 600), "ensemble": "true"}, None, 413),
    "time limit": ({}, ("pipeline", fail(TimeLimitExceeded("the time limit of 1 s was reached"))), 503),
    "unexpected error": ({}, ("pipeline", fail(RuntimeError("a bug"))), 500),
    "client hung up": ({}, ("hang-up", client_gone), 499),
    "served": ({}, None, 200),
}


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_predict_leaves_no_slot_queue_place_or_request_counted_in_flight(client, service, monkeypatch, outcome):
    fields, breakage, status = OUTCOMES[outcome]
    if breakage and breakage[0] == "pipeline":
        monkeypatch.setattr(pipeline, "run", breakage[1])
    elif breakage:
        monkeypatch.setattr(predict, "stop_when_client_leaves", breakage[1])
    image = fields.get("image", sample_bytes("camera.png")) if outcome != "no image" else None
    data = {key: value for key, value in fields.items() if key != "image"}
    if image is not None:
        data["image"] = (io.BytesIO(image), "a.png")
    before = gauges("/model/predict"), answered("/model/predict", status, "srgan" if image else "")
    response = client.post("/model/predict", data=data, content_type="multipart/form-data")
    assert response.status_code == status
    assert gauges("/model/predict") == {"running": 0.0, "queued": 0.0, "in_flight": 0.0}
    assert service.slot.running == service.slot.waiting == 0
    assert answered("/model/predict", status, "srgan" if image else "") == before[1] + 1


def test_the_page_leaves_nothing_in_flight_when_its_reader_leaves_after_the_first_event(client, service):
    before = answered("/app/upscale", 499, "srgan")
    response = client.post("/app/upscale", data={"image": (io.BytesIO(png(300, 300)), "a.png")},
                           content_type="multipart/form-data", buffered=False)
    assert next(iter(response.response)).startswith(b'{"event": "start"')
    response.close()
    assert gauges("/app/upscale")["in_flight"] == 0
    assert answered("/app/upscale", 499, "srgan") == before + 1
    # its image stops at its next tile and gives the slot back
    wait_for(lambda: service.slot.running == 0, 120, 0.05)
    assert gauges("/app/upscale") == {"running": 0.0, "queued": 0.0, "in_flight": 0.0}


def test_a_clients_error_is_logged_at_info_and_the_servers_at_error(client, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    client.post("/model/predict", data={}, content_type="multipart/form-data")
    monkeypatch.setattr(pipeline, "run", fail(RuntimeError("a bug")))
    client.post("/model/predict", data={"image": (io.BytesIO(sample_bytes("camera.png")), "a.png")},
                content_type="multipart/form-data")
    levels = [(record.name, getattr(record, "status", None), record.levelname) for record in caplog.records
              if record.levelno >= logging.INFO and record.name in ("superres.access", "api.errors")]
    assert levels == [("superres.access", 400, "INFO"), ("api.errors", None, "ERROR"), ("superres.access", 500, "INFO")]


# --- Why a request was refused: superres_refusals_total{route,status,reason} ------------------------------------


def refusals() -> dict[tuple[str, str, str], float]:
    """Every series of superres_refusals_total: (route, status, reason) -> count."""
    return {(sample.labels["route"], sample.labels["status"], sample.labels["reason"]): sample.value
            for family in REGISTRY.collect() if family.name == "superres_refusals"
            for sample in family.samples if sample.name == "superres_refusals_total"}


def added(before: dict, after: dict) -> dict:
    return {key: count - before.get(key, 0.0) for key, count in after.items() if count != before.get(key, 0.0)}


def serve(app, service, monkeypatch, slot: InferenceSlot | None = None, **settings) -> Service:
    """The app's service swapped, for this test, for one with these settings and slot (the same models)."""
    changed = service.settings.model_copy(update=settings)
    swapped = Service(changed, service.registry, slot or InferenceSlot(changed.queue_size, changed.queue_wait_s))
    monkeypatch.setitem(app.extensions, "super_resolution", swapped)
    return swapped


def network_that(monkeypatch, service, error: Exception) -> None:
    """srgan's network raising ``error`` at every call, as the GPU backend does (core/backends/pytorch.py)."""
    srgan = service.registry.get("srgan")
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: replace(srgan, run=fail(error)))


def held(slot: InferenceSlot, stack: ExitStack) -> InferenceSlot:
    stack.enter_context(slot.hold())  # another image runs until the test ends
    return slot


def past_the_time_limit(monkeypatch) -> None:
    """Each reading of the pipeline's clock 1000 s after the last: the first check is past REQUEST_TIME_LIMIT_S."""
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=itertools.count(0, 1000).__next__))


# Each refusal: how to bring it about (app, service, monkeypatch, stack), the form's extra fields, the status.
REFUSALS = {
    Reason.UPLOAD_TOO_LARGE: (lambda a, s, m, x: m.setitem(a.config, "MAX_CONTENT_LENGTH", 100), {}, 413),
    Reason.FORM_TOO_LARGE: (lambda a, s, m, x: m.setitem(a.config, "MAX_FORM_PARTS", 1), {"model": "srgan"}, 413),
    Reason.INPUT_PIXELS: (lambda a, s, m, x: serve(a, s, m, max_input_pixels=100), {}, 413),
    Reason.OUTPUT_PIXELS: (lambda a, s, m, x: serve(a, s, m, max_output_pixels=100), {}, 413),
    Reason.ENSEMBLE_PIXELS: (lambda a, s, m, x: serve(a, s, m, max_ensemble_pixels=100), {"ensemble": "true"}, 413),
    # Below MIN_MEMORY_BUDGET_MB, which only a copy of the settings (no validation) can hold.
    Reason.MEMORY_BUDGET: (lambda a, s, m, x: serve(a, s, m, memory_budget_mb=1), {}, 413),
    # Reached on a GPU only (tile_for_device_budget): raised where the CPU's budget is checked.
    Reason.GPU_MEMORY_BUDGET: (lambda a, s, m, x: m.setattr(memory, "tile_for_budget", fail(
        OverDeviceMemoryBudget("no tile's window fits GPU_MEMORY_BUDGET_MB"))), {}, 413),
    Reason.TIME_ESTIMATE: (lambda a, s, m, x: m.setattr(serve(a, s, m), "estimate_seconds", lambda *args: 1e9), {},
                           413),
    Reason.BUSY: (lambda a, s, m, x: serve(a, s, m, held(InferenceSlot(0, 60.0), x)), {}, 503),
    # A queue place, and no time to wait in it: refused after the first look, with no sleep.
    Reason.QUEUE_TIMEOUT: (lambda a, s, m, x: serve(a, s, m, held(InferenceSlot(1, 0.0), x)), {}, 503),
    Reason.TIME_LIMIT: (lambda a, s, m, x: past_the_time_limit(m), {}, 503),
    Reason.NOT_READY: (lambda a, s, m, x: m.setattr(s.registry, "get", fail(NotReady("model 'srgan' is not ready "
                                                                                     "(loading)"))), {}, 503),
    Reason.SHUTTING_DOWN: (lambda a, s, m, x: m.setattr(shutdown, "_stop_at", -math.inf), {}, 503),
    Reason.OUT_OF_MEMORY: (lambda a, s, m, x: network_that(m, s, OutOfDeviceMemory("no memory for a window")), {},
                           503),
    Reason.DEVICE_FAILED: (lambda a, s, m, x: network_that(m, s, DeviceFailed("CUDA error: an illegal memory "
                                                                                "access")), {}, 503),
}


def test_every_reason_is_brought_about_here():
    assert set(REFUSALS) == set(Reason)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("reason", REFUSALS)
def test_each_refusal_is_counted_once_with_its_reason_and_answers_as_before(app, client, service, monkeypatch,
                                                                              route, reason):
    bring_about, fields, status = REFUSALS[reason]
    with ExitStack() as stack:
        bring_about(app, service, monkeypatch, stack)
        before, answers = refusals(), answered_by_any_model(route, status)
        response = client.post(route, data={"image": (io.BytesIO(sample_bytes("camera.png")), "a.png"), **fields},
                               content_type="multipart/form-data")
        body = response.get_data()  # the page's stream runs to its end before it is counted
    assert added(before, refusals()) == {(route, str(status), reason.value): 1.0}
    assert answered_by_any_model(route, status) == answers + 1  # superres_http_requests_total counts as before
    assert final_status(route, response.status_code, body) == status


def answered_by_any_model(route: str, status: int) -> float:
    return sum(sample.value for family in REGISTRY.collect() if family.name == "superres_http_requests"
               for sample in family.samples if sample.name == "superres_http_requests_total"
               and (sample.labels["route"], sample.labels["status"]) == (route, str(status)))


def final_status(route: str, status: int, body: bytes) -> int:
    """The answer's status; the page's, where its stream had begun, in its last event."""
    if route == "/app/upscale" and status == 200:
        return json.loads(body.splitlines()[-1])["status"]
    return status


def test_a_request_served_or_refused_as_a_clients_error_counts_no_refusal(client):
    before = refusals()
    served = client.post("/model/predict", data={"image": (io.BytesIO(sample_bytes("camera.png")), "a.png")},
                         content_type="multipart/form-data")
    no_image = client.post("/model/predict", data={}, content_type="multipart/form-data")
    assert (served.status_code, no_image.status_code) == (200, 400)
    assert refusals() == before


def test_each_reason_is_one_error_class_of_the_status_it_names():
    """The label's values are the fixed set Reason, each the reason of exactly one class: 413 or 503."""
    classes = [cls for cls in subclasses(Refusal) if cls.reason is not None]
    assert sorted(cls.reason for cls in classes) == sorted(Reason)
    assert {cls.reason: cls.status for cls in classes} == {reason: REFUSALS[reason][2] for reason in Reason}


def test_no_refusal_is_raised_without_its_reason():
    """A class without a reason (TooLarge, Unavailable) raised anywhere would answer uncounted."""
    reasonless = {cls.__name__ for cls in (Refusal, *subclasses(Refusal)) if cls.reason is None}
    raised = [f"{path}:{node.lineno} {node.exc.func.id}" for path in SOURCES.rglob("*.py")
              if not path.is_relative_to(SOURCES / "tests") and ".venv" not in path.parts
              for node in ast.walk(ast.parse(path.read_text(), str(path)))
              if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
              and isinstance(node.exc.func, ast.Name) and node.exc.func.id in reasonless]
    assert reasonless == {"Refusal", "TooLarge", "Unavailable"}
    assert raised == []


def test_the_refusals_take_their_labels_from_fixed_sets_only(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_FORM_PARTS", 1)
    client.post("/model/predict", data={"image": (io.BytesIO(b"x"), "a.png"), "model": "a name of the client's own"},
                content_type="multipart/form-data")
    assert refusals()
    # nginx's own, which serve.py counts in the same metric (tests/test_deploy.py), where this process has any.
    front = {(route, str(status), reason) for route, status, reason in front_series()}
    for route, status, reason in refusals().keys() - front:
        assert (route in ROUTES, status in ("413", "503"), reason in set(Reason)) == (True, True, True)


def subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]


def test_a_stream_the_client_left_counts_no_refusal_even_as_the_work_is_refused():
    """A time limit reached as the reader leaves: the stream ends with the client's 499, not counted as a 503."""
    from api.web import _stream_outcome

    refused_event = {"event": "error", "status": 503, "message": "stopped after 1 of 4 tiles"}
    left = {"event": "error", "status": 499, "message": "the client closed the connection"}
    refused = {id(refused_event): Reason.TIME_LIMIT}
    assert _stream_outcome(left, "srgan", refused)[1].refusal is None
    assert _stream_outcome(refused_event, "srgan", refused)[1].refusal is Reason.TIME_LIMIT


def test_every_refusal_series_is_there_at_zero_before_the_first_refusal(settings):
    """rate() and increase() see a refusal only as a series' growth: without its 0 beforehand, the first refusal
    of each kind (the one that matters for a rare one) would go unseen, and dashboards would show no data."""
    monitoring.REFUSALS.clear()
    fresh = create_app(settings, load_models=False)
    assert refusals() == {(route, str(status), reason.value): 0.0
                          for route in ROUTES for reason, (_, _, status) in REFUSALS.items()}
    scraped = fresh.test_client().get("/metrics").get_data(as_text=True)
    assert 'superres_refusals_total{reason="device_failed",route="/app/upscale",status="503"} 0.0' in scraped
    assert 'superres_model_ready_workers{model="srgan"} 0.0' in scraped  # an alert sees a model that never loads
    assert 'superres_pixels_total{model="srresnet",side="output"} 0.0' in scraped


def test_a_refusal_class_not_yet_imported_stops_the_start_rather_than_leaving_its_series_out(monkeypatch):
    monkeypatch.setattr(api.errors.FormTooLarge, "reason", None)
    with pytest.raises(LookupError, match="form_too_large"):
        refusal_statuses()
