"""Operations: liveness, readiness, Prometheus metrics, request ids, JSON access logs and CORS."""
from __future__ import annotations

import io
import json
import logging
import threading
import time
from types import SimpleNamespace

import openvino
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import observability
from monitoring import latency_buckets
from app import create_app
from config import load_settings
from core.backends import cpu_name
from core.logs import JsonFormatter
from harness.live_server import live_server
from tests.conftest import decode, sample_bytes

SAMPLE = "chelsea.png"  # 112x75


def post_image(client, name: str = SAMPLE, **fields):
    return client.post("/model/predict", data={"image": (io.BytesIO(sample_bytes(name)), name), **fields},
                       content_type="multipart/form-data")


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition text, keyed by name and labels."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def unloaded_app():
    """A server whose models have not loaded (yet): what Kubernetes sees during start-up."""
    return create_app(load_settings(models="srgan", default_model="srgan"), load_models=False)


def test_health_is_200_while_models_are_still_loading(unloaded_app):
    response = unloaded_app.test_client().get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


# This machine has no GPU: the CPU path runs the networks, through OpenVINO.
CPU_DEVICE = {"kind": "cpu", "name": cpu_name(), "runtime": f"OpenVINO {openvino.get_version().split('-')[0]}",
              "backend": "openvino", "inference_slots": 1}


def test_ready_is_503_until_models_are_loaded(unloaded_app):
    response = unloaded_app.test_client().get("/ready")
    assert response.status_code == 503
    assert response.json == {"ready": False, "models": {"srgan": "pending"}, "device": CPU_DEVICE}


def test_ready_is_200_and_names_models_once_loaded(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json == {"ready": True, "models": {"srgan": "ready", "srresnet": "ready"}, "device": CPU_DEVICE}


def test_operations_routes_stay_out_of_the_swagger_document(client):
    paths = client.get("/swagger.json").json["paths"]
    assert {"/model/metadata", "/model/predict"} <= set(paths)
    assert not {"/health", "/ready", "/metrics"} & set(paths)


def test_metrics_count_a_predict_by_route_model_and_status_with_pixels_and_latency(client):
    before = scrape(client.get("/metrics").text)
    response = post_image(client, model="srresnet")
    assert response.status_code == 200
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.content_type.startswith("text/plain; version=")
    after = scrape(scraped.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/model/predict", "model": "srresnet"}
    assert grew("superres_http_requests_total", method="POST", status="200", **route) == 1
    assert grew("superres_http_request_duration_seconds_count", **route) == 1
    assert grew("superres_http_request_duration_seconds_sum", **route) > 0
    assert grew("superres_pixels_total", model="srresnet", side="input") == 112 * 75
    assert grew("superres_pixels_total", model="srresnet", side="output") == 448 * 300
    assert value(after, "superres_http_requests_in_flight", route="/model/predict") == 0


def test_metrics_count_errors_with_their_status(client):
    before = scrape(client.get("/metrics").text)
    assert client.post("/model/predict", data={}, content_type="multipart/form-data").status_code == 400
    after = scrape(client.get("/metrics").text)
    labels = {"route": "/model/predict", "method": "POST", "model": "", "status": "400"}
    assert value(after, "superres_http_requests_total", **labels) - value(before, "superres_http_requests_total", **labels) == 1


def test_metrics_show_running_and_queued_inference(client, service):
    entered = threading.Event()

    def wait_for_the_slot() -> None:
        with service.slot.hold():
            entered.set()

    with service.slot.hold():
        waiter = threading.Thread(target=wait_for_the_slot)
        waiter.start()
        deadline = time.monotonic() + 10
        while service.slot.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = scrape(client.get("/metrics").text)
        assert value(busy, "superres_inference_running") == 1
        assert value(busy, "superres_inference_queued") == 1
    waiter.join(10)
    assert entered.is_set()
    idle = scrape(client.get("/metrics").text)
    assert value(idle, "superres_inference_running") == 0
    assert value(idle, "superres_inference_queued") == 0


def test_every_response_carries_a_request_id(client):
    first, second = client.get("/model/metadata"), client.get("/model/metadata")
    assert len(first.headers["X-Request-ID"]) == 32
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    assert client.get("/health", headers={"X-Request-ID": "edge-7f3a.42"}).headers["X-Request-ID"] == "edge-7f3a.42"
    hostile = client.get("/health", headers={"X-Request-ID": "a b\"<script>"}).headers["X-Request-ID"]
    assert len(hostile) == 32 and hostile.isalnum()


def access_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "superres.access"]


def test_one_json_log_line_per_request_with_id_model_sizes_duration_and_status(client, caplog):
    caplog.set_level(logging.INFO, logger="superres.access")
    response = post_image(client)
    assert response.status_code == 200
    records = access_records(caplog)
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == response.headers["X-Request-ID"]
    assert entry["message"] == "request"
    assert entry["route"] == "/model/predict"
    assert entry["status"] == 200
    assert entry["model"] == "srgan"
    assert entry["input_size"] == "112x75"
    assert entry["output_size"] == "448x300"
    assert entry["input_bytes"] > len(sample_bytes(SAMPLE))
    assert entry["output_bytes"] == len(response.data)
    assert entry["duration_s"] > 0
    assert entry["level"] == "INFO"


def test_a_failed_request_is_logged_once_with_its_status(client, caplog):
    caplog.set_level(logging.INFO, logger="superres.access")
    response = post_image(client, model="nonexistent")
    assert response.status_code == 400
    [record] = access_records(caplog)
    assert record.status == 400
    assert record.request_id == response.headers["X-Request-ID"]


def test_probes_are_logged_at_debug_only(client, caplog):
    caplog.set_level(logging.DEBUG, logger="superres.access")
    client.get("/health")
    [record] = access_records(caplog)
    assert record.levelno == logging.DEBUG


def test_cors_headers_are_off_by_default(client):
    response = client.options("/model/predict", headers={"Origin": "https://example.org"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_enable_allows_any_origin_and_exposes_the_result_headers():
    app = create_app(load_settings(models="srgan", cors_enable=True), load_models=False)
    preflight = app.test_client().options("/model/predict", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "X-Output-Size" in preflight.headers["Access-Control-Expose-Headers"]
    assert app.test_client().get("/health").headers["Access-Control-Allow-Origin"] == "*"


def test_cors_enable_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CORS_ENABLE", "true")
    assert load_settings().cors_enable is True


@pytest.mark.slow
def test_gunicorn_metrics_add_up_across_workers():
    with live_server(workers=2, threads=2) as server:
        _wait_until_both_workers_loaded(server.url)
        answered = [requests.get(f"{server.url}/model/metadata", timeout=30).status_code for _ in range(8)]
        upload = requests.post(f"{server.url}/model/predict", timeout=120,
                               files={"image": (SAMPLE, sample_bytes(SAMPLE), "image/png")})
        assert answered == [200] * 8
        assert upload.status_code == 200 and decode(upload.content).size == (448, 300)
        text = requests.get(f"{server.url}/metrics", timeout=30).text
        log_lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    [predict_line] = [line for line in log_lines if line.get("request_id") == upload.headers["X-Request-ID"]]
    assert predict_line["status"] == 200 and predict_line["output_size"] == "448x300"
    samples = scrape(text)
    # Whichever worker answered each request, the scrape sees all of them.
    assert value(samples, "superres_http_requests_total",
                 route="/model/metadata", method="GET", model="", status="200") == 8
    assert value(samples, "superres_http_requests_total",
                 route="/model/predict", method="POST", model="srgan", status="200") == 1
    assert value(samples, "superres_pixels_total", model="srgan", side="output") == 448 * 300
    assert value(samples, "superres_model_load_seconds", model="srgan") > 0
    assert value(samples, "superres_model_ready_workers", model="srgan") == 2
    assert value(samples, "superres_http_request_duration_seconds_count", route="/model/predict", model="srgan") == 1


def _wait_until_both_workers_loaded(url: str, timeout_s: float = 180) -> None:
    # /ready answers for the worker that takes the request; the gauge adds up all live workers.
    deadline = time.monotonic() + timeout_s
    while value(scrape(requests.get(f"{url}/metrics", timeout=30).text), "superres_model_ready_workers", model="srgan") < 2:
        assert time.monotonic() < deadline, "the second worker did not load srgan"
        time.sleep(0.5)


def test_the_latency_buckets_rise_to_the_longest_answer_the_settings_allow():
    assert latency_buckets(690.0) == (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 690.0)
    assert latency_buckets(1290.0)[-3:] == (640, 1280, 1290.0)
    assert latency_buckets(31.5)[-3:] == (10, 20, 31.5)


def test_a_request_as_long_as_the_settings_allow_falls_in_a_finite_bucket(client, settings, monkeypatch):
    """An answer within every limit is counted below +Inf: +Inf holds only those that ran past every limit."""
    def bucket(text: str, bound: str) -> float:
        return value(scrape(text), "superres_http_request_duration_seconds_bucket", route="/model/metadata",
                     model="", le=bound)

    longest = settings.longest_answer_s
    before = client.get("/metrics").get_data(as_text=True)
    # The request's clock: it starts at 0 and ends 1 s within the longest answer.
    monkeypatch.setattr(observability, "time", SimpleNamespace(perf_counter=iter([0.0, longest - 1]).__next__))
    assert client.get("/model/metadata").status_code == 200
    monkeypatch.undo()
    after = client.get("/metrics").get_data(as_text=True)
    assert bucket(after, str(longest)) - bucket(before, str(longest)) == 1
    assert bucket(after, "+Inf") - bucket(before, "+Inf") == 1
