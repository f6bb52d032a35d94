"""Lanczos resizing of pixels of any channel count and bit depth, in float, rounded back to their levels."""
from __future__ import annotations

import numpy as np
from PIL import Image

from core.encoding import ROWS_PER_BLOCK

# Input pixels a transparent pixel may lie from a visible one and still take its colour: past the 3 of the
# Lanczos kernel, since the network draws each output pixel from further around it.
BLEED_REACH = 8
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))
BLEED_BAND_PIXELS = 1 << 16  # pixels filled at a time: bounds the index arrays of a ring to a few MB


Region = tuple[float, float, float, float]  # (left, top, right, bottom) of the source, in its pixels


def resize_channel(channel: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None,
                   box: Region | None = None) -> np.ndarray:
    """Resize one (H, W) channel to ``size`` (width, height) with Lanczos, in float, keeping its dtype; into
    ``out`` where given. With ``box``, only that region of the channel is resized to ``size``: the kernel still
    reads the pixels around it, so the result is that part of the whole channel resized.

    The float result is rounded a block of rows at a time: at a large output's size, whole-image float
    temporaries would take several times the result's own bytes."""
    resized = Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.LANCZOS, box)
    values = np.asarray(resized)
    del resized  # the array holds its own copy
    if out is None:
        out = np.empty(values.shape, channel.dtype)
    highest = np.iinfo(channel.dtype).max
    for start in range(0, len(values), ROWS_PER_BLOCK):
        rows = np.rint(values[start:start + ROWS_PER_BLOCK])
        out[start:start + ROWS_PER_BLOCK] = np.clip(rows, 0, highest, out=rows)
    return out


def resize(pixels: np.ndarray, size: tuple[int, int], box: Region | None = None) -> np.ndarray:
    """Resize (H, W, C) pixels of any channel count and dtype (the ``box`` of them, where given) to ``size`` with
    Lanczos."""
    out = np.empty((size[1], size[0], pixels.shape[-1]), pixels.dtype)
    for channel in range(pixels.shape[-1]):
        resize_channel(pixels[..., channel], size, out[..., channel], box)
    return out


def bleed_into_transparency(colour: np.ndarray, alpha: np.ndarray | None, reach: int = BLEED_REACH) -> np.ndarray:
    """``colour`` with each fully transparent pixel within ``reach`` pixels of a visible one given the mean colour
    of its nearer neighbours, ring by ring outward.

    A transparent pixel's stored colour is invisible, and often black. Resampled as it is, it would be mixed
    into the edge, where the upscaled alpha is partly opaque: a dark fringe around every cut-out. Farther
    transparent pixels keep the colour they have."""
    if alpha is None:
        return colour
    unfilled = alpha == 0
    if not unfilled.any() or unfilled.all():
        return colour
    colour = colour if colour.flags.writeable else colour.copy()
    for _ in range(reach):
        filled = ~unfilled
        ring = np.zeros_like(unfilled)
        ring[1:] |= filled[:-1]
        ring[:-1] |= filled[1:]
        ring[:, 1:] |= filled[:, :-1]
        ring[:, :-1] |= filled[:, 1:]
        ring &= unfilled
        if not ring.any():
            break
        # A band of rows at a time bounds the index arrays; the band's writes go to pixels that ``filled``
        # marks empty, which no later band reads.
        band = max(1, BLEED_BAND_PIXELS // colour.shape[1])
        for top in range(0, len(ring), band):
            rows, columns = np.nonzero(ring[top:top + band])
            rows += top
            colour[rows, columns] = _mean_of_filled_neighbours(colour, filled, rows, columns)
        unfilled &= ~ring
    return colour


def _mean_of_filled_neighbours(colour: np.ndarray, filled: np.ndarray, rows: np.ndarray,
                               columns: np.ndarray) -> np.ndarray:
    height, width = filled.shape
    total = np.zeros((len(rows), colour.shape[-1]), np.float32)
    count = np.zeros((len(rows), 1), np.float32)
    for step_y, step_x in NEIGHBOURS:
        y, x = rows + step_y, columns + step_x
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        y, x = y.clip(0, height - 1), x.clip(0, width - 1)
        use = (inside & filled[y, x])[:, None]
        total += colour[y, x] * use
        count += use
    return np.rint(total / count)
