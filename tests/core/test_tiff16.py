"""TIFF samples Pillow would alter (core/tiff16.py): 16-bit colour, grey and alpha read with every level, and the
layouts refused rather than read altered. Pillow writes no 16-bit colour TIFF, so the files are written here."""
from __future__ import annotations

import io
import re
import struct
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from core import containers, images, tiff16
from core.errors import InvalidImage
from harness.tiff_writer import DEFLATE, LZW, NONE, PACKBITS, tiff
from tests.core.test_images import save

LIMIT = 64 * 64
RGB, MIN_IS_BLACK, MIN_IS_WHITE, CMYK, CIELAB = 2, 1, 0, 5, 8


def levels(height: int, width: int, samples: int, seed: int = 0) -> np.ndarray:
    """Random 16-bit levels: any cut to 8 bits, wrap or swapped channel shows."""
    return np.random.default_rng(seed).integers(0, 65536, (height, width, samples)).astype(np.uint16)


# --- What Pillow does with them -------------------------------------------------------------------


def test_pillow_cuts_a_16_bit_rgb_tiff_to_8_bits():
    """Why core/tiff16.py exists: should Pillow gain 16-bit colour, it can go."""
    with Image.open(io.BytesIO(tiff(levels(4, 4, 3), RGB))) as image:
        assert image.mode == "RGB" and np.asarray(image).dtype == np.uint8


# --- Every level kept -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [NONE, LZW, DEFLATE, PACKBITS], ids=["raw", "lzw", "deflate", "packbits"])
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_a_16_bit_rgb_tiff_keeps_every_level(compression, order):
    pixels = levels(5, 7, 3)
    decoded = images.decode(tiff(pixels, RGB, compression=compression, order=order), LIMIT)
    assert decoded.colour.dtype == np.uint16 and np.array_equal(decoded.colour, pixels)
    assert decoded.alpha is None


def test_a_16_bit_rgba_bigtiff_keeps_every_level():
    """Little-endian, as Pillow writes a BigTIFF: it reads the big-endian one this module writes at no depth."""
    pixels = levels(5, 7, 4)
    data = tiff(pixels, RGB, extra=(tiff16.UNASSOCIATED_ALPHA,), compression=DEFLATE, big=True)
    assert data[:4] == b"II+\x00"
    decoded = images.decode(data, LIMIT)
    assert np.array_equal(decoded.colour, pixels[..., :3]) and np.array_equal(decoded.alpha, pixels[..., 3])


@pytest.mark.parametrize("tile", [None, 16], ids=["strip", "tiles"])
@pytest.mark.parametrize("compression", [LZW, DEFLATE], ids=["lzw", "deflate"])
def test_the_horizontal_predictor_is_undone_per_channel_and_from_each_tiles_edge(compression, tile):
    pixels = levels(20, 37, 3)
    decoded = images.decode(tiff(pixels, RGB, compression=compression, predictor=True, tile=tile), LIMIT)
    assert np.array_equal(decoded.colour, pixels)


def test_a_16_bit_rgba_tiff_keeps_its_alpha():
    pixels = levels(5, 7, 4)
    decoded = images.decode(tiff(pixels, RGB, extra=(tiff16.UNASSOCIATED_ALPHA,), compression=DEFLATE), LIMIT)
    assert np.array_equal(decoded.colour, pixels[..., :3]) and np.array_equal(decoded.alpha, pixels[..., 3])


def test_associated_alpha_is_divided_out_at_16_bits():
    alpha = np.array([[65535, 32768, 0]], np.uint16)
    colour = np.array([[[1000, 2000, 65535], [1000, 16384, 32768], [0, 0, 0]]], np.uint16)
    pixels = np.dstack([colour, alpha])
    decoded = images.decode(tiff(pixels, RGB, extra=(tiff16.ASSOCIATED_ALPHA,)), LIMIT)
    assert decoded.colour.tolist() == [[[1000, 2000, 65535], [2000, 32768, 65535], [0, 0, 0]]]
    assert decoded.alpha.tolist() == alpha.tolist()


def test_a_16_bit_grey_and_alpha_tiff_pillow_cannot_open_is_read():
    pixels = levels(5, 7, 2)
    decoded = images.decode(tiff(pixels, MIN_IS_BLACK, extra=(tiff16.UNASSOCIATED_ALPHA,)), LIMIT)
    assert np.array_equal(decoded.colour, pixels[..., :1]) and np.array_equal(decoded.alpha, pixels[..., 1])


def test_an_extra_sample_that_is_not_alpha_is_left_out_as_pillow_leaves_it_at_8_bits():
    pixels = levels(5, 7, 4)
    decoded = images.decode(tiff(pixels, RGB, extra=(0,)), LIMIT)
    assert np.array_equal(decoded.colour, pixels[..., :3]) and decoded.alpha is None


def test_the_alpha_is_the_first_extra_sample_that_is_alpha():
    pixels = levels(5, 7, 5)
    decoded = images.decode(tiff(pixels, RGB, extra=(0, tiff16.UNASSOCIATED_ALPHA)), LIMIT)
    assert np.array_equal(decoded.colour, pixels[..., :3]) and np.array_equal(decoded.alpha, pixels[..., 4])


@pytest.mark.parametrize("samples", [1, 2])
def test_16_bit_white_is_zero_grey_is_inverted_not_shown_as_its_negative(samples):
    pixels = np.array([[[0, 65535], [1000, 65535], [65535, 0]]], np.uint16)[..., :samples]
    decoded = images.decode(tiff(pixels, MIN_IS_WHITE, extra=(tiff16.UNASSOCIATED_ALPHA,) * (samples - 1)), LIMIT)
    assert decoded.colour[..., 0].tolist() == [[65535, 64535, 0]]


def test_a_16_bit_white_is_zero_bigtiff_without_samples_per_pixel_is_inverted():
    """As Pillow writes 16-bit grey: a BigTIFF, its one sample a pixel left to the default."""
    pixels = np.array([[0, 1000, 65535]], np.uint16)
    data = bytearray(save(Image.fromarray(pixels), "TIFF", big_tiff=True))
    entries = containers.tiff_first_directory(bytes(data))
    assert data[:4] == b"II+\x00" and tiff16.SAMPLES not in entries
    struct.pack_into("<HHQH", data, entries[tiff16.PHOTOMETRIC].at, tiff16.PHOTOMETRIC, 3, 1, MIN_IS_WHITE)
    assert images.decode(bytes(data), LIMIT).colour[..., 0].tolist() == [[65535, 64535, 0]]


@pytest.mark.parametrize("turn", [6, 8])
def test_the_orientation_turns_the_16_bit_pixels_once(turn):
    pixels = levels(3, 5, 3)
    header = images.read_header(tiff(pixels, RGB, orientation=turn), LIMIT)
    assert (header.width, header.height) == (3, 5)
    decoded = images.decode_pixels(tiff(pixels, RGB, orientation=turn), header)
    assert np.array_equal(decoded.colour, np.rot90(pixels, -1 if turn == 6 else 1))


def test_the_header_counts_16_bit_samples_for_the_memory_budget():
    header = images.read_header(tiff(levels(5, 7, 4), RGB, extra=(tiff16.UNASSOCIATED_ALPHA,)), LIMIT)
    assert (header.width, header.height, header.samples, header.sample_bytes) == (7, 5, 4, 2)


def test_the_pixel_limit_counts_pixels_not_samples():
    images.read_header(tiff(levels(64, 64, 4), RGB, extra=(2,)), LIMIT)  # at the limit, 4 samples a pixel


def test_a_16_bit_rgba_tiff_decodes_in_memory_bounded_by_its_file_and_its_samples():
    """The file's copy the decoder reads, Pillow's samples as bytes (8 a pixel) and the colour and alpha planes made
    from them (8 more): not the samples copied again before they are split."""
    side = 256
    data = tiff(levels(side, side, 4), RGB, extra=(tiff16.UNASSOCIATED_ALPHA,), compression=DEFLATE, predictor=True)
    header = images.read_header(data, side * side)
    tracemalloc.start()
    try:
        images.decode_pixels(data, header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(data) + 2.5 * side * side * 8


def test_a_corrupt_16_bit_stream_is_400():
    data = tiff(levels(5, 7, 3), RGB, compression=DEFLATE)
    with pytest.raises(InvalidImage, match="the TIFF image is corrupt or truncated"):
        images.decode(data[:-20] + bytes(20), LIMIT)


def test_8_bit_grey_with_associated_alpha_is_read_with_its_colour_divided_out():
    """Pillow opens it as La, which it converts to LA alone: it was refused as corrupt."""
    pixels = np.array([[[100, 200], [50, 100], [0, 0]]], np.uint8)
    decoded = images.decode(tiff(pixels, MIN_IS_BLACK, extra=(tiff16.ASSOCIATED_ALPHA,)), LIMIT)
    assert decoded.colour[..., 0].tolist() == [[127, 127, 0]]  # 100 / 200 and 50 / 100 of 255, as Pillow rounds
    assert decoded.alpha.tolist() == [[200, 100, 0]]


# --- Refused rather than altered ------------------------------------------------------------------


@pytest.mark.parametrize(("pixels", "photometric", "named"), [
    (levels(2, 2, 4), CMYK, "16-bit CMYK samples (4 a pixel)"),
    (levels(2, 2, 3), CIELAB, "16-bit CIELab samples (3 a pixel)"),
    (levels(2, 2, 3).astype(np.uint32), RGB, "32-bit RGB samples (3 a pixel)"),
], ids=["cmyk", "lab", "32-bit rgb"])
def test_other_deep_colour_is_refused_naming_its_depth_and_what_to_send(pixels, photometric, named):
    with pytest.raises(InvalidImage, match=rf"the TIFF image has {re.escape(named)}.*16-bit .*PNG"):
        images.read_header(tiff(pixels, photometric), LIMIT)


def test_signed_16_bit_colour_is_refused():
    with pytest.raises(InvalidImage, match=r"signed 16-bit RGB samples"):
        images.read_header(tiff(levels(2, 2, 3).astype(np.int16), RGB, sample_format=2), LIMIT)


def test_signed_16_bit_grey_with_negative_levels_is_refused_naming_them_not_as_32_bit():
    pixels = np.array([[[-35], [5], [32767]]], np.int16)
    with pytest.raises(InvalidImage, match=r"the integer grey image has levels from -35 to 32767.*unsigned 8 or 16"):
        images.decode(tiff(pixels, MIN_IS_BLACK, sample_format=2), LIMIT)


def test_signed_16_bit_grey_without_negative_levels_keeps_them():
    pixels = np.array([[[0], [5], [32767]]], np.int16)
    decoded = images.decode(tiff(pixels, MIN_IS_BLACK, sample_format=2), LIMIT)
    assert decoded.colour.dtype == np.uint16 and decoded.colour[..., 0].tolist() == [[0, 5, 32767]]


@pytest.mark.parametrize("samples", [1, 3])
def test_signed_8_bit_samples_are_refused_rather_than_read_as_unsigned(samples):
    pixels = np.full((2, 2, samples), -1, np.int8)
    with pytest.raises(InvalidImage, match=r"signed 8-bit samples.*\(-1 as 255\)"):
        images.read_header(tiff(pixels, MIN_IS_BLACK if samples == 1 else RGB, sample_format=2), LIMIT)
