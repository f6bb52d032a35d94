"""Every way a request can end leaves the worker's gauges where they were and is counted once, by its status."""
from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import REGISTRY

from api import predict
from core import pipeline
from core.errors import Cancelled, TimeLimitExceeded
from harness.raw_http import png, wait_for
from tests.conftest import sample_bytes

ROUTES = ("/model/predict", "/app/upscale")


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
