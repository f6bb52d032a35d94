"""core/png_encoder.py: every mode and bit depth the service writes, split over several threads, read back exactly."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import png
import pytest
from PIL import Image, ImageCms

from core import png_encoder
from core.png_encoder import encode_png


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk, checking each CRC."""
    assert data[:8] == png_encoder.SIGNATURE
    found, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0] == zlib.crc32(kind + body)
        found.append((kind, body))
        position += 12 + length
    return found


def random_pixels(shape: tuple[int, int, int], dtype: type) -> np.ndarray:
    return np.random.default_rng(sum(shape)).integers(0, np.iinfo(dtype).max, shape, dtype, endpoint=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("parts", [1, 2, 5])
def test_pixels_read_back_exactly_by_pypng(dtype, channels, parts):
    pixels = random_pixels((13, 7, channels), dtype)
    _, _, rows, info = png.Reader(bytes=encode_png(pixels, None, 1, parts)).read()
    assert info["bitdepth"] == np.dtype(dtype).itemsize * 8 and info["planes"] == channels
    assert np.array_equal(np.vstack([np.asarray(row, dtype) for row in rows]).reshape(pixels.shape), pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_an_alpha_plane_given_apart_writes_the_same_file_as_one_joined_beforehand(monkeypatch, dtype, channels):
    monkeypatch.setattr(png_encoder, "BLOCK_BYTES", 100)  # joined block by block, on several threads
    joined = random_pixels((23, 11, channels + 1), dtype)
    apart = encode_png(np.ascontiguousarray(joined[..., :-1]), None, 1, 3, np.ascontiguousarray(joined[..., -1]))
    assert apart == encode_png(joined, None, 1, 3)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 50, 4), (50, 1, 1), (3, 2, 2)])
def test_tiny_and_thin_images_read_back_by_pillow(shape):
    pixels = random_pixels(shape, np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels, None, 6, 4))))
    assert np.array_equal(decoded.reshape(shape), pixels)


@pytest.mark.parametrize("level", range(10))
def test_every_level_reads_back_exactly(level):
    """1 to 3 deflate with ISA-L, the others with zlib: the same PNG stream either way."""
    pixels = random_pixels((31, 17, 3), np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels, None, level, 3)))), pixels)


def test_rows_deflated_in_many_blocks_form_one_stream_with_a_valid_checksum(monkeypatch):
    monkeypatch.setattr(png_encoder, "BLOCK_BYTES", 100)  # a few rows per block, several blocks per thread
    pixels = random_pixels((40, 9, 3), np.uint8)
    encoded = encode_png(pixels, None, 1, 3)
    stream = b"".join(body for kind, body in chunks(encoded) if kind == b"IDAT")
    assert len(zlib.decompress(stream)) == 40 * (9 * 3 + 1)  # zlib checks the Adler-32 at the end
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), pixels)


@pytest.mark.parametrize("failing_run", [0, 2])
def test_a_run_that_fails_on_any_thread_fails_the_encode(monkeypatch, failing_run):
    """No PNG with a hole in its rows: the helper thread's error reaches the caller, as the caller's own does."""
    deflate_rows = png_encoder._deflate_rows

    def failing(pixels, start, stop, level, last):
        if start == 10 * failing_run:
            raise MemoryError("no room for the run")
        return deflate_rows(pixels, start, stop, level, last)

    monkeypatch.setattr(png_encoder, "_deflate_rows", failing)
    with pytest.raises(MemoryError, match="no room for the run"):
        encode_png(random_pixels((40, 9, 3), np.uint8), None, 1, 4)


def test_the_colour_profile_is_written_before_the_pixels():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    encoded = encode_png(random_pixels((4, 4, 3), np.uint8), profile, 1, 2)
    assert [kind for kind, _ in chunks(encoded)] == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
    assert Image.open(io.BytesIO(encoded)).info["icc_profile"] == profile


def test_the_adler32_of_two_runs_combines_as_of_their_concatenation():
    first, second = bytes(range(256)) * 300, bytes(reversed(range(256))) * 7
    combined = png_encoder._adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)
