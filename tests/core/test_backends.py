"""Every inference backend, running the form of each model that is served, reproduces the
TensorFlow reference (the network as its weights describe it) to within one grey level."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.models.specs import SPECS
from core.backends import KERAS_BACKENDS as BACKENDS
from core.backends.tensorflow import from_keras
from core.models.runtime import Network
from tests.conftest import ROOT, SAMPLES

OTHER_BACKENDS = [backend for backend in BACKENDS if backend != "tensorflow"]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, cropped so that every backend runs in about a second."""
    image = Image.open(SAMPLES / "coffee.png").convert("RGB").crop((20, 10, 84, 74))
    return np.asarray(image, np.float32)[None] / 255


def _levels(batch: np.ndarray) -> np.ndarray:
    return np.rint(batch * 255).astype(np.int16)


@pytest.fixture(scope="module")
def keras_models(settings) -> dict:
    return {}


def _model(cache: dict, settings, name: str):
    if name not in cache:
        cache[name] = SPECS[name].build(settings)
    return cache[name]


def _served(model, name: str):
    form = SPECS[name].inference_form
    return form(model) if form else model


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("name", ["srgan", "srresnet"])
def test_backend_matches_tensorflow(keras_models, settings, photo, name, backend):
    model = _model(keras_models, settings, name)
    reference = _levels(from_keras(name, model, 16, "tensorflow").predict(photo))
    candidate = from_keras(name, _served(model, name), 16, backend).predict(photo)
    assert candidate.shape == (1, 256, 256, 3)
    assert np.abs(_levels(candidate) - reference).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["realsr", "realesrgan"])
def test_openvino_matches_tensorflow_on_rrdbnet(settings, photo, name):
    model = SPECS[name].build(settings)
    small = photo[:, :32, :32]
    reference = _levels(from_keras(name, model, 16, "tensorflow").predict(small))
    candidate = _levels(from_keras(name, model, 16, "openvino").predict(small))
    assert np.abs(candidate - reference).max() <= 1


def test_unknown_backend_is_refused(keras_models, settings):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        from_keras("srgan", _model(keras_models, settings, "srgan"), 16, "tpu")


def test_an_openvino_network_keeps_its_weights_when_its_keras_model_is_dropped(settings, photo):
    """OpenVINO reads the weights from the Keras model's memory: a network whose Keras model is gone must
    still give its own answer after other models are loaded (the registry keeps only the networks)."""
    import gc

    def network(key: tuple[int, str], backend: str) -> Network:
        variant = SPECS["realcugan"].variant(*key)
        model, statistics = variant.keras_form(settings)
        return from_keras("realcugan", model, 20, backend, scale=variant.scale, border=variant.border,
                          statistics=statistics)

    image = photo[:, :40, :40]
    first = network((2, "none"), "openvino")
    gc.collect()
    network((4, "3"), "openvino")  # its weights land where the first's Keras model was
    gc.collect()
    expected = network((2, "none"), "tensorflow").predictor(image[0])(image)
    assert np.abs(_levels(first.predictor(image[0])(image)) - _levels(expected)).max() <= 1


# In a fresh interpreter: the CPU backend's module, then a conversion as a MODELS_DIR model's takes, counting forks.
CONVERSION_FORKS = """
import os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))
import core.backends.openvino
import openvino, torch
openvino.convert_model(torch.nn.Conv2d(3, 3, 3), example_input=torch.rand(1, 3, 8, 8))
print(len(forks), sys.modules["openvino_telemetry"])
"""


def test_openvino_sends_no_usage_data_and_forks_nothing_to_convert():
    """OpenVINO's converter sent Google Analytics events at import and at each conversion, each from a forked
    process; the service's processes send none."""
    done = subprocess.run([sys.executable, "-c", CONVERSION_FORKS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "None"]
