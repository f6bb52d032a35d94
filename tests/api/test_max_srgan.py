"""Model max-srgan served from a TensorFlow-1 checkpoint named by MAX_SRGAN_CHECKPOINT."""
from __future__ import annotations

import io

import numpy as np
import pytest

from app import create_app
from config import Settings, load_settings
from tests.conftest import decode, encode
from tests.core.test_tf1_checkpoint import (
    SCOPE,
    random_weights,
    reference_forward,
    small_image,
    write_checkpoint,
)

MISSING = f"{SCOPE}/subpixelconv_stage1/Prelu/alpha"


def served_app(prefix, weights):
    """An app serving srgan and max-srgan from ``weights`` written at ``prefix``.

    The app is created before the checkpoint is written: creating it pins
    TensorFlow's thread pools, which must happen before TensorFlow's first op.
    """
    flask_app = create_app(load_settings(models="srgan", max_srgan_checkpoint=prefix), load_models=False)
    write_checkpoint(prefix, weights)
    flask_app.extensions["super_resolution"].registry.load_all()
    return flask_app


def post(client, data: bytes, model: str):
    return client.post("/model/predict", data={"image": (io.BytesIO(data), "upload.png"), "model": model},
                       content_type="multipart/form-data")


@pytest.fixture(scope="module")
def weights():
    return random_weights(seed=5)


@pytest.fixture(scope="module")
def client(tmp_path_factory, weights):
    return served_app(tmp_path_factory.mktemp("max") / "model", weights).test_client()


@pytest.fixture(scope="module")
def broken_client(tmp_path_factory, weights):
    incomplete = {name: value for name, value in weights.items() if name != MISSING}
    return served_app(tmp_path_factory.mktemp("broken") / "model", incomplete).test_client()


def test_environment_variable_adds_max_srgan(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELS", "srgan")
    monkeypatch.setenv("MAX_SRGAN_CHECKPOINT", str(tmp_path / "model"))
    settings = Settings()
    assert settings.model_names == ("srgan", "max-srgan")
    assert settings.max_srgan_checkpoint == tmp_path / "model"


@pytest.mark.slow
def test_served_pixels_equal_the_numpy_network(client, weights):
    image = small_image(seed=6)
    response = post(client, encode(image), "max-srgan")
    assert response.status_code == 200, response.json
    assert response.headers["X-Model"] == "max-srgan"
    served = np.asarray(decode(response.data), np.int16)
    expected = np.rint(np.clip(reference_forward(weights, image / 255.0), 0, 1) * 255).astype(np.int16)
    assert served.shape == expected.shape == (48, 40, 3)
    assert np.abs(served - expected).max() <= 1


@pytest.mark.slow
def test_metadata_lists_max_srgan_ready(client):
    entries = {entry["id"]: entry for entry in client.get("/model/metadata").json["models"]}
    assert list(entries) == ["srgan", "max-srgan"]
    assert entries["max-srgan"]["state"] == "ready"
    assert entries["max-srgan"]["parameters"] == 1_550_659  # 1,546,435 trainable + BatchNorm statistics


@pytest.mark.slow
def test_wrong_checkpoint_fails_only_max_srgan(broken_client):
    entries = {entry["id"]: entry for entry in broken_client.get("/model/metadata").json["models"]}
    assert entries["max-srgan"]["state"].startswith("failed: ")
    assert MISSING not in entries["max-srgan"]["state"], "the checkpoint's details belong in the log only"
    assert entries["srgan"]["state"] == "ready"

    refused = post(broken_client, encode(small_image()), "max-srgan")
    assert refused.status_code == 503
    assert "max-srgan" in refused.json["message"] and "server log" in refused.json["message"]
    assert post(broken_client, encode(small_image()), "srgan").status_code == 200
