"""jpeg output keeps the colour detail the model made at high quality."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from core import encoding
from core.formats import JPEG_FULL_COLOUR_QUALITY

# get_sampling's answers
FULL_COLOUR, HALF_COLOUR = 0, 2


def colour_stripes() -> np.ndarray:
    """One-pixel columns of red and blue: colour detail at the finest scale, which 4:2:0 averages to purple."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, 0::2, 0] = 255
    pixels[:, 1::2, 2] = 255
    return pixels


def jpeg_of(pixels: np.ndarray, quality: int) -> Image.Image:
    data = encoding.encode(pixels, None, None, "jpeg", quality, png_level=1, threads=1)
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("quality, sampling", [(JPEG_FULL_COLOUR_QUALITY, FULL_COLOUR), (100, FULL_COLOUR),
                                               (JPEG_FULL_COLOUR_QUALITY - 1, HALF_COLOUR), (1, HALF_COLOUR)])
def test_jpeg_keeps_full_colour_resolution_from_its_quality_on(quality, sampling):
    assert JpegImagePlugin.get_sampling(jpeg_of(colour_stripes(), quality)) == sampling


def test_full_colour_jpeg_keeps_one_pixel_colour_detail_that_half_colour_loses():
    stripes = colour_stripes().astype(np.int16)
    full = np.abs(np.asarray(jpeg_of(colour_stripes(), JPEG_FULL_COLOUR_QUALITY)) - stripes).mean()
    half = np.abs(np.asarray(jpeg_of(colour_stripes(), JPEG_FULL_COLOUR_QUALITY - 1)) - stripes).mean()
    assert full < 10 < half, (full, half)
