"""Every built-in model served through the PyTorch backend (on the CPU here, as ``make run-gpu`` serves it on a
machine without a GPU): loaded from the packaged weights, seam-free when tiled, answering /model/predict."""
from __future__ import annotations

import io

import pytest

from config import load_settings
from core.models.specs import PACKAGED
from tests.conftest import decode, loaded_app, sample_bytes
from tests.core.test_zoo import lowest_seam_psnr

BUILT_IN = PACKAGED


@pytest.fixture(scope="module")
def pytorch_app():
    return loaded_app(load_settings(models=",".join(BUILT_IN), default_model="srgan", backend="pytorch"))


@pytest.fixture(scope="module")
def registry(pytorch_app):
    return pytorch_app.extensions["super_resolution"].registry


@pytest.mark.slow
def test_every_built_in_model_loads_on_pytorch_in_f32_on_the_cpu(registry):
    assert registry.states() == {name: "ready" for name in BUILT_IN}
    assert {entry["id"]: entry["precision"] for entry in registry.describe()} == {name: "f32" for name in BUILT_IN}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "scale"), [("span", 2), ("span", 4), ("anime", 4),
                                              ("realcugan", 2), ("realcugan", 3), ("realcugan", 4)])
def test_tiles_match_the_whole_image_on_pytorch(registry, model, scale):
    """Real-CUGAN's whole-image averages, borders and alignment hold on this backend as on the CPU path."""
    network = registry.get(model, scale)
    assert network.scale == scale
    assert lowest_seam_psnr(network) >= 45


@pytest.mark.slow
def test_predict_and_metadata_on_pytorch(pytorch_app):
    client = pytorch_app.test_client()
    answer = client.post("/model/predict", data={"image": (io.BytesIO(sample_bytes("camera.png")), "camera.png"),
                                                 "model": "anime"}, content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert decode(answer.data).size == (384, 384)
    device = client.get("/model/metadata").get_json()["device"]
    assert device["kind"] == "cpu" and device["backend"] == "pytorch"
    assert device["runtime"].startswith("PyTorch ")
    assert client.get("/ready").get_json()["device"] == device
