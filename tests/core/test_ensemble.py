"""Self-ensemble: the 8 flips and rotations, each put back the right way, through the pipeline's tiles."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from core.errors import OutOfDeviceMemory
from core.metrics import psnr
from core.models.ensemble import self_ensemble
from core.options import UpscaleOptions
from tests.core.test_images import pattern, save


def _nearest(batch: np.ndarray) -> np.ndarray:
    return batch.repeat(4, axis=1).repeat(4, axis=2)


def _left_to_right(batch: np.ndarray) -> np.ndarray:
    """A whole-image statistic that turning the image changes: the mean step from each pixel to its right-hand
    neighbour, (N, 1, 1, 3) as a graph's global pooling gives it; it changes sign when the image is mirrored."""
    return np.diff(batch, axis=2).mean(axis=(1, 2), keepdims=True)


def _measured(service):
    """A network with whole-image averages (as Real-CUGAN's squeeze-excitation): 4x nearest, brightened by
    the image's left-to-right step."""
    def run(inputs):
        batch, step = inputs
        return _nearest(batch) * 0.5 + 0.25 + 4 * step
    return replace(service.registry.get("srgan"), run=run, measure=_left_to_right)


def _turned_mean(predict, image: np.ndarray) -> np.ndarray:
    """The mean of ``predict`` on the whole image turned each of the 8 ways, each result turned back."""
    total = 0
    for k in range(4):
        for flip in (False, True):
            turned = np.rot90(image, k)
            turned = turned[:, ::-1] if flip else turned
            out = predict(np.ascontiguousarray(turned)[None])[0]
            total = total + np.rot90(out[:, ::-1] if flip else out, -k)
    return total / 8


def test_each_turned_copy_runs_with_the_averages_of_the_image_turned_so(service, monkeypatch):
    """The ensemble of a network with whole-image averages is the mean of that network on each turned image:
    a turned copy run with the upright image's averages is another network's answer."""
    network = _measured(service)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    card = pattern(9, 14)  # not square: the quarter turns change the shape
    result = service.upscale(save(Image.fromarray(card)), UpscaleOptions(model="srgan", ensemble=True))
    with Image.open(io.BytesIO(result.data)) as image:
        served = np.asarray(image).astype(np.int32)
    whole = _turned_mean(network.predict, card.astype(np.float32) / 255)
    expected = np.rint(np.clip(whole, 0, 1) * 255).astype(np.int32)
    assert served.shape == expected.shape == (36, 56, 3)
    assert np.abs(served - expected).max() <= 1


def test_turned_copies_are_put_back_the_right_way_on_a_non_square_window():
    """A network that is only a nearest-neighbour enlargement gives the same with and without the ensemble."""
    batch = np.random.default_rng(0).random((2, 5, 9, 3), np.float32)
    averaged = self_ensemble(lambda k, flip: _nearest)(batch)
    assert np.allclose(averaged, _nearest(batch))


class AveragesOutOfMemoryAbove:
    """The averages of a fake device that has memory for windows of at most ``limit`` pixels."""

    def __init__(self, measure, limit: int) -> None:
        self.measure, self.limit, self.windows = measure, limit, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.windows.append(batch.shape[1:3])
        if batch.shape[1] * batch.shape[2] > self.limit:
            raise OutOfDeviceMemory(f"the GPU has no memory for a window of {batch.shape[2]}x{batch.shape[1]}")
        return self.measure(batch)


@pytest.mark.parametrize("ensemble", [False, True])
def test_averages_the_gpu_has_no_memory_for_are_measured_again_in_smaller_windows(service, monkeypatch, caplog,
                                                                                 ensemble):
    """Real-CUGAN's whole-image averages (8 times with the ensemble) go through the pipeline's out-of-memory retry:
    measured again in half the window, and the answer is the image, not a 503."""
    network = _measured(service)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    data = save(Image.fromarray(pattern(150, 200)))
    options = UpscaleOptions(model="srgan", ensemble=ensemble)
    whole = np.asarray(Image.open(io.BytesIO(service.upscale(data, options).data)))
    short = AveragesOutOfMemoryAbove(_left_to_right, 100 * 100)
    network = replace(network, measure=short)
    with caplog.at_level("WARNING", logger="core.pipeline"):
        result = service.upscale(data, options)
    assert "measuring the image's averages again in windows of 100 px" in caplog.text
    assert short.windows[0] == (150, 200) and max(h * w for h, w in short.windows[1:]) <= 100 * 100
    served = np.asarray(Image.open(io.BytesIO(result.data)))
    assert served.shape == whole.shape == (600, 800, 3)
    assert psnr(served, whole) >= 30


def test_averages_with_no_memory_even_in_the_smallest_windows_are_a_503(service, monkeypatch):
    network = replace(_measured(service), measure=AveragesOutOfMemoryAbove(_left_to_right, 1))
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    with pytest.raises(OutOfDeviceMemory, match="even with windows of the image's averages of 64 px"):
        service.upscale(save(Image.fromarray(pattern(150, 200))), UpscaleOptions(model="srgan", ensemble=True))
