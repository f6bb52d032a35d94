"""The folded output stage computes the same function as the network as published."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from config import load_settings
from core.models.specs import SPECS
from core.models.srresnet import build_srresnet, fold_output_convolution
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = Image.open(SAMPLES / "coffee.png").convert("RGB").crop((0, 0, 48, 40))
    return np.asarray(image, np.float32)[None] / 255


def _srgan() -> keras.Model:
    return SPECS["srgan"].build(load_settings())


def _random_max_srgan_like() -> keras.Model:
    """The checkpoint's variant (no bias, no BN scale, no tanh) with random weights."""
    keras.utils.set_random_seed(3)
    model = build_srresnet(conv_bias=False, bn_scale=False, tanh_output=False)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            layer.set_weights([rng.uniform(0.0, 0.3, w.shape) for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("make", [_srgan, _random_max_srgan_like], ids=["srgan", "no-tanh"])
def test_folded_network_equals_the_original(photo, make):
    model = make()
    folded = fold_output_convolution(model)
    expected = model(photo, training=False).numpy()
    actual = folded(photo, training=False).numpy()
    assert actual.shape == expected.shape == (1, 160, 192, 3)
    # Over the whole image, its edges included: the folded kernel's zero padding stands for the original's.
    assert np.abs(actual - expected).max() < 1e-5


def test_the_served_form_never_holds_the_4x_feature_map():
    folded = SPECS["srgan"].inference_form(_srgan())
    names = [layer.name for layer in folded.layers]
    assert "output_conv" not in names and "upsample_2_prelu" not in names
    assert folded.get_layer("output_conv_folded").kernel.shape == (5, 5, 256, 12)
