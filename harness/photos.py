"""A real photo at any size: what the benchmarks and memory probes upscale."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import png
from PIL import Image

from core import tiff16
from harness.tiff_writer import tiff

PHOTO = Path(__file__).resolve().parent.parent / "assets" / "test_examples" / "low_resolution" / "astronaut.png"


def photo_png(side: int) -> bytes:
    """The photo resampled to side x side (bicubic), as PNG: content like a user's, any size."""
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def photo16_rgba(side: int) -> np.ndarray:
    """The photo at 16 bits with random low bits and a translucent alpha plane: the most bytes per pixel a result
    can have, and little for deflate to save."""
    colour = np.asarray(Image.open(io.BytesIO(photo_png(side))), np.uint16) * 257
    colour += np.random.default_rng(side).integers(0, 257, colour.shape, dtype=np.uint16)
    alpha = np.full((side, side, 1), 40000, np.uint16)
    return np.concatenate([colour, alpha], axis=-1)


def photo16_rgba_png(side: int) -> bytes:
    """That 16-bit RGBA photo as PNG, read by pypng."""
    buffer = io.BytesIO()
    png.Writer(side, side, greyscale=False, alpha=True, bitdepth=16).write(buffer, photo16_rgba(side).reshape(side, -1))
    return buffer.getvalue()


def photo16_rgba_tiff(side: int) -> bytes:
    """That 16-bit RGBA photo as an uncompressed TIFF, read by core/tiff16.py through a copy of the file."""
    return tiff(photo16_rgba(side), tiff16.RGB, extra=(tiff16.UNASSOCIATED_ALPHA,))


# The profile of the probes' profiled picture: near the most a 32 MiB upload (MAX_UPLOAD_BYTES) can carry.
PROFILED_BYTES = 30 * 1024 * 1024


def rgb_profile(size: int) -> bytes:
    """An RGB ICC profile of ``size`` bytes as the service reads one (its header's colour space), the rest random:
    nothing for deflate to save, as in the largest profile an upload can carry."""
    header = bytearray(128)
    header[12:20], header[36:40] = b"mntrRGB ", b"acsp"
    return bytes(header) + np.random.default_rng(size).integers(0, 256, size - len(header), np.uint8).tobytes()


def photo_profiled_tiff(side: int, profile_bytes: int = PROFILED_BYTES) -> bytes:
    """The photo as TIFF carrying an RGB ICC profile of ``profile_bytes`` (TIFF and WebP hold one of any length):
    few pixels and a large upload, most of it a profile the result carries."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo_png(side))).save(buffer, "TIFF", icc_profile=rgb_profile(profile_bytes))
    return buffer.getvalue()


# The text of the probes' texted picture: 60 zTXt chunks, each inflating to Pillow's most (MAX_TEXT_CHUNK, 1 MiB),
# 62 kB uploaded in all.
TEXT_CHUNKS, TEXT_CHUNK_BYTES = 60, 1024 * 1024


def photo_texted_png(side: int) -> bytes:
    """The photo as PNG with 60 MiB of text (zTXt) before its pixel data, as an editor's or an image generator's
    metadata stands there: a small upload that a decoder keeping text would hold many times over."""
    data = photo_png(side)
    texts = b"".join(_png_chunk(b"zTXt", f"note {index}".encode() + b"\x00\x00" + zlib.compress(bytes(TEXT_CHUNK_BYTES), 9))
                     for index in range(TEXT_CHUNKS))
    return data[:33] + texts + data[33:]  # after the signature and IHDR


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# The pictures a memory probe can upscale, by name.
PICTURES: dict[str, Callable[[int], bytes]] = {"photo": photo_png, "photo16-rgba": photo16_rgba_png,
                                               "photo16-rgba-tiff": photo16_rgba_tiff,
                                               "photo-profiled": photo_profiled_tiff, "photo-texted": photo_texted_png}
