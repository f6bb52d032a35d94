"""A GPU's out-of-memory error on a window: the pass is planned again in smaller tiles (injected here on the CPU)."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from core.errors import OutOfDeviceMemory
from core.options import UpscaleOptions
from tests.core.test_images import pattern, save


@pytest.fixture()
def windows_up_to(service, monkeypatch):
    """srgan on a device with room for windows of at most ``limit`` pixels; returns the windows tried and a
    setter of the limit, with TILE_SIZE at 1024 (an operator's setting larger than the image)."""
    srgan = service.registry.get("srgan")
    tried: list[tuple[int, int]] = []
    limit = [0]

    def run(batch):
        tried.append(batch.shape[1:3])
        if batch.shape[1] * batch.shape[2] > limit[0]:
            raise OutOfDeviceMemory(f"no memory for a window of {batch.shape[2]}x{batch.shape[1]}")
        return srgan.run(batch)

    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: replace(srgan, run=run))
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"tile_size": 1024}))
    return tried, lambda pixels: limit.__setitem__(0, pixels)


def test_each_retry_runs_smaller_windows_than_the_try_before(service, windows_up_to):
    """Tiles of 1024 px cut a 120 x 100 image into one window; so do 512, 256 and 128: a retry at those runs
    the very window that had no room. Each retry must run smaller windows."""
    tried, set_limit = windows_up_to
    set_limit(80 * 80)
    result = service.upscale(save(Image.fromarray(pattern(100, 120))), UpscaleOptions(model="srgan"))
    failed = [shape for shape in tried if shape[0] * shape[1] > 80 * 80]
    assert failed == [(100, 120)], f"windows tried without room: {failed}"
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (480, 400) and np.asarray(image).std() > 0
