"""Lanczos resizing of pixels of any channel count and bit depth, in float, rounded back to their levels."""
from __future__ import annotations

import numpy as np
from PIL import Image


def resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W) channel to ``size`` (width, height) with Lanczos, in float, keeping its dtype."""
    resized = Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.rint(np.asarray(resized)), 0, np.iinfo(channel.dtype).max).astype(channel.dtype)


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) pixels of any channel count and dtype to ``size`` with Lanczos."""
    return np.stack([resize_channel(pixels[..., c], size) for c in range(pixels.shape[-1])], axis=-1)
