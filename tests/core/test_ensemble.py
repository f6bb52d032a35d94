"""Self-ensemble: the 8 flips and rotations, each put back the right way, through the pipeline's tiles."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

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
