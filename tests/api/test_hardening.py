"""Operations hardening through the Flask app: bounded metric labels, honest logs, JSON errors, exposure."""
from __future__ import annotations

import gzip
import io
import json
import logging
import random
import string
from dataclasses import replace

import pytest

from api.observability import METHODS, OTHER_METHOD
from core.logs import JsonFormatter
from app import create_app
from config import load_settings
from core.admission import InferenceSlot
from core.service import Service
from tests.api.test_ops import scrape
from tests.conftest import ROOT, TEST_MODELS, sample_bytes


def post_image(client, path: str = "/model/predict", **fields):
    return client.post(path, data={"image": (io.BytesIO(sample_bytes("chelsea.png")), "chelsea.png"), **fields},
                       content_type="multipart/form-data")


def access_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "superres.access"]


# --- Metrics cardinality ------------------------------------------------------------------------------------


def test_random_methods_and_paths_add_no_metric_series(client):
    def series() -> set[frozenset]:
        return {labels for name, labels in scrape(client.get("/metrics").text) if name == "superres_http_requests_total"}

    series()  # the scrape counts itself from the next scrape on
    for _ in range(3):  # the first round may add the "other" and the unknown-model series once
        client.open("/x", method="XYZZY")
        client.post("/model/predict", data={"model": "xyzzy"}, content_type="multipart/form-data")
    before = series()
    rng = random.Random(0)
    for _ in range(50):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 20)))
        path = "/" + "".join(rng.choices(string.ascii_lowercase, k=12))
        client.open(path, method=method)
        client.post("/model/predict", data={"model": method.lower()}, content_type="multipart/form-data")
    after = series()
    assert after == before
    methods = {value for labels in after for key, value in labels if key == "method"}
    assert methods <= METHODS | {OTHER_METHOD}


# --- Logs ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_queue(app, service):
    settings = load_settings(models=TEST_MODELS, queue_size=0)
    app.extensions["super_resolution"] = busy = Service(settings, service.registry, InferenceSlot(0, 1))
    yield busy
    app.extensions["super_resolution"] = service


def test_a_busy_503_is_one_access_line_with_model_and_message_and_no_traceback(client, no_queue, caplog):
    caplog.set_level(logging.INFO)
    with no_queue.slot.hold():
        response = post_image(client, model="srresnet")
    assert response.status_code == 503
    assert not [record for record in caplog.records if record.exc_info], "a deliberate 503 is not a crash"
    [line] = access_records(caplog)
    assert line.status == 503 and line.model == "srresnet" and "busy" in line.error


def test_the_streaming_route_is_counted_when_its_stream_ends_with_the_results_sizes(client, caplog):
    caplog.set_level(logging.INFO, logger="superres.access")
    before = scrape(client.get("/metrics").text)
    response = post_image(client, "/app/upscale")
    body = response.get_data()
    events = [json.loads(line) for line in body.splitlines()]
    assert events[-1]["event"] == "result"
    [line] = [record for record in access_records(caplog) if record.route == "/app/upscale"]
    assert line.status == 200 and line.model == "srgan"
    assert line.input_size == "112x75" and line.output_size == "448x300"
    assert line.output_bytes == len(body)
    after = scrape(client.get("/metrics").text)
    key = ("superres_http_requests_total", frozenset({"route": "/app/upscale", "method": "POST", "model": "srgan",
                                                      "status": "200"}.items()))
    assert after.get(key, 0) - before.get(key, 0) == 1
    in_flight = ("superres_http_requests_in_flight", frozenset({"route": "/app/upscale"}.items()))
    assert after.get(in_flight, 0) == 0


def test_a_path_forging_a_log_record_stays_inside_its_own_line(client, caplog):
    caplog.set_level(logging.INFO, logger="superres.access")
    path = '/x\n{"level": "ERROR", "message": "forged"}'
    client.get(path.replace("\n", "%0A").replace(" ", "%20"))
    [record] = access_records(caplog)
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["path"] == path


# --- JSON everywhere ----------------------------------------------------------------------------------------


def test_an_unknown_route_answers_json_404(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json["message"] == "no route GET /no/such/route: the API is described at /"


@pytest.mark.parametrize("path, allowed", [
    ("/model/predict", {"POST", "OPTIONS"}),
    ("/model/metadata", {"GET", "HEAD", "OPTIONS"}),
    ("/health", {"GET", "HEAD", "OPTIONS"}),
    ("/app/upscale", {"POST", "OPTIONS"}),
    ("/app/sizes", {"GET", "HEAD", "OPTIONS"}),
])
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_a_405_says_which_methods_the_route_takes(client, path, allowed, method):
    response = client.open(path, method=method)
    assert response.status_code == 405 and response.is_json
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert response.json["message"] == f"{method} is not allowed on {path}: it takes {', '.join(sorted(allowed))}"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_pages_upscale_route_answers_get_with_405_not_404(client, method):
    """The page's files are served under /app by name: a route for any path there took GET /app/upscale."""
    response = client.open("/app/upscale", method=method)
    assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    if method == "GET":
        assert response.json["message"] == "GET is not allowed on /app/upscale: it takes OPTIONS, POST"


@pytest.mark.parametrize("path, content_type", [("/app/", "text/html"), ("/app/index.html", "text/html"),
                                                ("/app/app.js", "text/javascript"), ("/app/png.js", "text/javascript"),
                                                ("/app/style.css", "text/css")])
def test_the_pages_files_are_served_by_name(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == content_type and response.data


@pytest.mark.parametrize("method, path, route", [("GET", "/model//metadata", "/model/metadata"),
                                                ("POST", "/model//predict", "/model/predict")])
def test_a_path_with_repeated_slashes_is_sent_to_the_route_not_to_the_host_the_client_named(client, method, path,
                                                                                             route):
    response = client.open(f"{path}?x=1", method=method, headers={"Host": "evil.example"})
    assert response.status_code == 308 and response.is_json
    assert response.headers["Location"] == f"{route}?x=1"
    assert response.json["message"] == f"{path} is not a route; the route is {route}"


def test_docs_quote_the_405_as_the_server_words_it(client):
    message = client.put("/model/predict").json["message"]
    assert f"`{message}`" in (ROOT / "docs" / "inputs.md").read_text()


def test_a_compressed_body_is_refused_with_415(client):
    multipart = ("--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n").encode() \
        + sample_bytes("chelsea.png") + b"\r\n--b--\r\n"
    response = client.post("/model/predict", data=gzip.compress(multipart),
                           headers={"Content-Encoding": "gzip", "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 415
    assert "encoded (gzip)" in response.json["message"]


@pytest.mark.parametrize("mask, problem", [("{id", "Missing closing bracket"), ("id}", "Unexpected closing bracket"),
                                           ("id,,name", "Unexpected comma"), ("id{name}", "inconsistent with model")])
def test_a_field_mask_that_cannot_be_read_is_a_400_naming_the_header(client, mask, problem):
    # Flask-RESTX reads X-Fields on /model/metadata (as IBM's MAX did); its parse errors went out as 500s.
    response = client.get("/model/metadata", headers={"X-Fields": mask})
    assert response.status_code == 400, response.data[:200]
    message = response.json["message"]
    assert f"the X-Fields header {mask!r}" in message and problem in message, message


def test_a_field_mask_that_can_be_read_selects_the_metadatas_fields(client):
    response = client.get("/model/metadata", headers={"X-Fields": "id,models{id}"})
    assert response.status_code == 200
    assert response.json["id"] == "max-image-super-resolution-generator"
    assert set(response.json) == {"id", "models"} and all(set(entry) == {"id"} for entry in response.json["models"])


def test_werkzeugs_form_limits_are_named_not_taken_for_the_upload_size(client, app):
    fields = {f"f{i}": "x" for i in range(app.config.get("MAX_FORM_PARTS") or 1000)}
    response = post_image(client, **fields)
    assert response.status_code == 413
    message = response.json["message"]
    assert "the form is too large: at most 1000 parts" in message and "MAX_UPLOAD_BYTES" not in message
    long_field = post_image(client, model="x" * 600_000)
    assert long_field.status_code == 413 and "500000 bytes in a text field" in long_field.json["message"]


# --- Exposure -----------------------------------------------------------------------------------------------


def test_every_answer_says_nosniff_and_the_pages_allow_only_self(client):
    for path in ("/health", "/model/metadata", "/no/such/route", "/app/", "/"):
        response = client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    for path in ("/app/", "/"):
        policy = client.get(path).headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'self'" in policy


@pytest.mark.parametrize("path", ["/app/../config.py", "/app/%2e%2e/config.py", "/app/..%2fconfig.py",
                                  "/app/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/swaggerui/../config.py"])
def test_the_pages_files_come_from_their_folder_alone(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.is_json and "no route GET" in response.json["message"]


def test_cors_origins_lists_the_origins_allowed_on_every_route():
    app = create_app(load_settings(models="srgan", cors_origins="https://a.example, https://b.example"),
                     load_models=False)
    client = app.test_client()
    for path in ("/health", "/metrics", "/model/metadata"):
        allowed = client.get(path, headers={"Origin": "https://b.example"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example", path
        assert "Origin" in allowed.headers["Vary"]
        other = client.get(path, headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers, path
    # Matched whole: a listed origin inside another, or cut short, is another origin.
    for origin in ("https://b.example.evil.example", "https://b.exampl", "https://b.example:8443", "null"):
        assert "Access-Control-Allow-Origin" not in client.get("/health", headers={"Origin": origin}).headers, origin
    assert "Access-Control-Allow-Credentials" not in allowed.headers


def test_cors_enable_alone_allows_any_origin_without_credentials():
    app = create_app(load_settings(models="srgan", cors_enable=True), load_models=False)
    response = app.test_client().get("/health", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_model_that_fails_to_load_keeps_its_path_and_error_in_the_log(monkeypatch, caplog):
    app = create_app(load_settings(models="srgan"), load_models=False)
    registry = app.extensions["super_resolution"].registry

    def broken(choice, settings):
        raise OSError("Unable to open file /secret/site-packages/weights/generator.h5 (truncated)")

    monkeypatch.setitem(registry.cards, "srgan", replace(registry.cards["srgan"], load=broken))
    registry.load_all()
    client = app.test_client()
    for path in ("/ready", "/model/metadata"):
        text = client.get(path).get_data(as_text=True)
        assert "/secret" not in text and "truncated" not in text, path
        assert "failed" in text
    assert "/secret/site-packages" in caplog.text
