"""Lanczos resizing of pixels of any channel count and bit depth, in float, rounded back to their levels."""
from __future__ import annotations

import numpy as np
from PIL import Image

from core.encoding import ROWS_PER_BLOCK


def resize_channel(channel: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Resize one (H, W) channel to ``size`` (width, height) with Lanczos, in float, keeping its dtype; into
    ``out`` where given.

    The float result is rounded a block of rows at a time: at a large output's size, whole-image float
    temporaries would take several times the result's own bytes."""
    resized = Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    values = np.asarray(resized)
    del resized  # the array holds its own copy
    if out is None:
        out = np.empty(values.shape, channel.dtype)
    highest = np.iinfo(channel.dtype).max
    for start in range(0, len(values), ROWS_PER_BLOCK):
        rows = np.rint(values[start:start + ROWS_PER_BLOCK])
        out[start:start + ROWS_PER_BLOCK] = np.clip(rows, 0, highest, out=rows)
    return out


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) pixels of any channel count and dtype to ``size`` with Lanczos."""
    out = np.empty((size[1], size[0], pixels.shape[-1]), pixels.dtype)
    for channel in range(pixels.shape[-1]):
        resize_channel(pixels[..., channel], size, out[..., channel])
    return out
