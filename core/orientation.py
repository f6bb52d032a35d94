"""EXIF orientation: how a camera's image is turned for display, read from its tags and applied to pixels."""
from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image

from core.containers import CORRUPT_DATA_ERRORS, tiff_first_directory

# Orientations that turn the image a quarter: the displayed width is the stored height.
QUARTER_TURNS = (5, 6, 7, 8)
# What a raw EXIF block may start with, and the TIFF headers (little- and big-endian) its tags then start with.
EXIF_PREFIX = b"Exif\x00\x00"
EXIF_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")


def of_image(image: Image.Image) -> int:
    """The orientation in an opened image's EXIF tags (1, as stored, where it has none or they do not read)."""
    try:
        return _valid_orientation(image.getexif().get(ExifTags.Base.Orientation, 1))
    except CORRUPT_DATA_ERRORS:
        return 1  # unreadable EXIF: viewers show such images unrotated, and so do we


def from_exif(exif: memoryview | None) -> int:
    """The orientation in a raw EXIF block (a PNG's eXIf chunk), read in place from its first directory: the block
    may be as long as the upload, and Pillow's reader would copy it, and every value of that directory, outside the
    memory budget."""
    if exif is None:
        return 1
    tags = exif[len(EXIF_PREFIX):] if exif[:len(EXIF_PREFIX)] == EXIF_PREFIX else exif
    if bytes(tags[:4]) not in EXIF_TIFF_HEADERS:
        return 1
    entry = tiff_first_directory(tags).get(ExifTags.Base.Orientation)
    return _valid_orientation(entry.value) if entry and entry.count == 1 else 1


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to (H, W, ...) pixels, as Pillow's ``exif_transpose`` does."""
    oriented = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](pixels)
    return np.ascontiguousarray(oriented)


def displayed(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of a stored ``width`` x ``height`` image as shown after ``orientation``."""
    return (height, width) if orientation in QUARTER_TURNS else (width, height)
