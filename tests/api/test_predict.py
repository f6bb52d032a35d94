"""The MAX HTTP contract through Flask's test client, with the real models."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

from core.admission import InferenceSlot
from core.service import Service
from tests.conftest import ROOT, decode, sample_bytes


def post(client, data: bytes | None, **fields):
    form = dict(fields)
    if data is not None:
        form["image"] = (io.BytesIO(data), "upload.png")
    return client.post("/model/predict", data=form, content_type="multipart/form-data")


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "rocket.png"])
def test_predict_answers_png_exactly_four_times_larger(client, name):
    response = post(client, sample_bytes(name))
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    source, result = decode(sample_bytes(name)), decode(response.data)
    assert result.format == "PNG"
    assert result.size == (source.width * 4, source.height * 4)
    assert np.asarray(result).std() > 10, "output is flat"
    assert response.headers["X-Output-Size"] == f"{source.width * 4}x{source.height * 4}"


def test_models_differ_and_model_is_selectable_by_form_or_query(client):
    srgan = post(client, sample_bytes(), model="srgan")
    srresnet = client.post("/model/predict?model=srresnet",
                           data={"image": (io.BytesIO(sample_bytes()), "a.png")})
    assert srgan.status_code == srresnet.status_code == 200
    assert srresnet.headers["X-Model"] == "srresnet"
    a = np.asarray(decode(srgan.data), np.float32)
    b = np.asarray(decode(srresnet.data), np.float32)
    assert np.abs(a - b).mean() > 1.0


def test_server_timing_names_every_stage(client):
    response = post(client, sample_bytes("chelsea.png"))
    stages = {}
    for entry in response.headers["Server-Timing"].split(", "):
        name, duration = entry.split(";dur=")
        stages[name] = float(duration)
    assert set(stages) == {"upload", "header", "queue", "decode", "convert", "network", "assembly", "resize", "encode"}
    assert all(milliseconds >= 0 for milliseconds in stages.values())
    assert stages["network"] > 0


def test_default_model_is_srgan(client):
    assert post(client, sample_bytes("chelsea.png")).headers["X-Model"] == "srgan"


def test_missing_image_part_is_400(client):
    response = post(client, None)
    assert response.status_code == 400
    assert "image" in response.json["message"]


def test_bytes_that_are_no_image_are_400_naming_formats(client):
    response = post(client, b"this is plain text, not a picture")
    assert response.status_code == 400
    assert "PNG" in response.json["message"] and "JPEG" in response.json["message"]


def test_unknown_model_is_400_listing_models(client):
    response = post(client, sample_bytes(), model="waifu2x")
    assert response.status_code == 400
    assert "waifu2x" in response.json["message"]
    assert "srgan" in response.json["message"] and "srresnet" in response.json["message"]


def test_upload_over_the_limit_is_413(client, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = post(client, b"\0" * (limit + 1))
    assert response.status_code == 413
    assert "message" in response.json


@pytest.mark.parametrize("queue_size", [0, 1])  # refused at once; refused after QUEUE_WAIT_S in the queue
def test_docs_load_quotes_the_busy_answers_as_the_server_words_them(app, service, monkeypatch, queue_size):
    slot = InferenceSlot(queue_size=queue_size, wait_timeout_s=0.01)
    monkeypatch.setitem(app.extensions, "super_resolution", Service(service.settings, service.registry, slot))
    with slot.hold():  # another image is running
        response = post(app.test_client(), sample_bytes("rocket.png"))
    assert response.status_code == 503

    def shape(message: str) -> str:
        return re.sub(r"[0-9]+(\.[0-9]+)?", "N", message)
    quoted = re.findall(r"`(the server is busy: [^`]*)`", (ROOT / "docs" / "load.md").read_text())
    assert shape(response.json["message"]) in map(shape, quoted), (response.json, quoted)
