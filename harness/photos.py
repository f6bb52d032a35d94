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

TIFF_XMP = 700
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


# The metadata of the probes' pictures that carry some in each format: near the most a 32 MiB upload
# (MAX_UPLOAD_BYTES) can carry, random (nothing for a compressor to save), in pieces as large as the format allows.
METADATA_BYTES = 30 * 1024 * 1024
JPEG_SEGMENT_BYTES = 65_533  # a segment's length field counts itself: 65535 in all
EXIF_EMPTY_DIRECTORY = b"MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"  # a TIFF header, a directory of no tags


def metadata(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()


def photo_chunked_png(side: int) -> bytes:
    """The photo as PNG with half the metadata in private chunks (an editor's own, kept as they stand by a decoder
    that keeps unknown chunks) of 1 MiB each and half in its EXIF chunk (eXIf), before its pixel data."""
    data = photo_png(side)
    half = METADATA_BYTES // 2
    private = b"".join(_png_chunk(b"prVt", piece) for piece in _pieces(metadata(half), 1024 * 1024))
    exif = _png_chunk(b"eXIf", EXIF_EMPTY_DIRECTORY + metadata(half))
    return data[:33] + private + exif + data[33:]


def photo_segmented_jpeg(side: int) -> bytes:
    """The photo as JPEG with the metadata in application segments (APP1, APP3, APP13) and comments of 64 kB each,
    where editors and cameras write theirs."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo_png(side))).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    markers = (b"\xff\xe1", b"\xff\xe3", b"\xff\xed", b"\xff\xfe")
    segments = b"".join(markers[index % len(markers)] + struct.pack(">H", len(piece) + 2) + piece
                        for index, piece in enumerate(_pieces(metadata(METADATA_BYTES), JPEG_SEGMENT_BYTES)))
    return data[:2] + segments + data[2:]


def photo_annotated_webp(side: int) -> bytes:
    """The photo as lossless WebP with half the metadata as its EXIF chunk and half as its XMP chunk."""
    buffer = io.BytesIO()
    half = METADATA_BYTES // 2
    Image.open(io.BytesIO(photo_png(side))).save(buffer, "WEBP", lossless=True, exif=b"Exif\x00\x00" + metadata(half),
                                                 xmp=metadata(half + 1))
    return buffer.getvalue()


def photo_tagged_tiff(side: int) -> bytes:
    """The photo as TIFF with the metadata as its XMP tag (700), as a decoder reads every tag's value."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo_png(side))).save(buffer, "TIFF", tiffinfo={TIFF_XMP: metadata(METADATA_BYTES)})
    return buffer.getvalue()


def photo_commented_gif(side: int) -> bytes:
    """The photo as GIF with the metadata as its comment (in sub-blocks of 255 bytes)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo_png(side))).save(buffer, "GIF", comment=metadata(METADATA_BYTES))
    return buffer.getvalue()


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


# The pictures a memory probe can upscale, by name.
PICTURES: dict[str, Callable[[int], bytes]] = {"photo": photo_png, "photo16-rgba": photo16_rgba_png,
                                               "photo16-rgba-tiff": photo16_rgba_tiff,
                                               "photo-profiled": photo_profiled_tiff, "photo-texted": photo_texted_png,
                                               "photo-chunked": photo_chunked_png,
                                               "photo-segmented": photo_segmented_jpeg,
                                               "photo-annotated-webp": photo_annotated_webp,
                                               "photo-tagged-tiff": photo_tagged_tiff,
                                               "photo-commented-gif": photo_commented_gif}
