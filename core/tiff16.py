"""TIFF samples Pillow would alter: 16-bit images of more than one sample a pixel, read here with every level, and
the layouts refused with a reason rather than read altered.

Pillow has no 16-bit mode of more than one channel, and cuts a 16-bit RGB, RGBA or CMYK TIFF to 8 bits. Its decoders
(its own for uncompressed strips, libtiff for every compression) do read 16-bit grey whole, so they are given a copy
of the file whose first directory says that the same bytes are grey, one sample a pixel and ``samples`` times as
wide; the samples are then grouped back into pixels. The decoders read the same strips or tiles, compressed as they
are, so what Pillow reads is read, and what it refuses is refused. Three tags act on whole pixels and are taken out
of the decoder's way to be applied here: the horizontal predictor (a sample stored as its difference from the same
channel of the pixel before), the extra samples (alpha) and the orientation.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import TiffImagePlugin

from core.containers import TiffEntry, tiff_first_directory
from core.errors import InvalidImage

WIDTH, BITS, COMPRESSION, PHOTOMETRIC, ORIENTATION, SAMPLES = 256, 258, 259, 262, 274, 277
PLANAR, PREDICTOR, TILE_WIDTH, EXTRA_SAMPLES, SAMPLE_FORMAT = 284, 317, 322, 338, 339
SHORT, LONG = 3, 4
ENTRY_BYTES, BIG_ENTRY_BYTES = 12, 20  # a directory entry, in a TIFF and a BigTIFF
MIN_IS_WHITE, MIN_IS_BLACK, RGB = 0, 1, 2
PHOTOMETRIC_NAMES = {MIN_IS_WHITE: "grey (white as 0)", MIN_IS_BLACK: "grey", RGB: "RGB", 3: "palette", 4: "mask", 5: "CMYK",
                     6: "YCbCr", 8: "CIELab", 9: "ICCLab", 10: "ITULab"}
COLOUR_SAMPLES = {MIN_IS_WHITE: 1, MIN_IS_BLACK: 1, RGB: 3}
CHUNKY = 1  # PlanarConfiguration: a pixel's samples side by side
UNSIGNED, SIGNED, FLOATING_POINT = 1, 2, 3  # SampleFormat
SAMPLE_KINDS = {SIGNED: "signed", FLOATING_POINT: "floating-point"}
ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA = 1, 2  # ExtraSamples; 0 is data that is not alpha, dropped as Pillow drops it
ALPHA_KINDS = (ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA)
HORIZONTAL_PREDICTOR = 2
# The compressions whose libtiff codec applies the predictor: LZW, Adobe deflate, deflate, LZMA, Zstandard.
PREDICTED_COMPRESSIONS = (5, 8, 32946, 34925, 50000)
# Private tag numbers the tags taken out of the decoder's way are given: a decoder skips tags it does not know.
HIDDEN = {ORIENTATION: 65000, PREDICTOR: 65001, EXTRA_SAMPLES: 65002}
# The most samples a pixel is read with: RGB and a few extra samples.
MOST_SAMPLES = 16
FULL = 65535
ROWS_PER_BLOCK = 256  # rows unpremultiplied at a time, so no full-size float temporary is made


@dataclass(frozen=True)
class Layout:
    """How a 16-bit TIFF of more than one sample a pixel holds them, from its first directory."""

    photometric: int
    samples: int
    extra_samples: tuple[int, ...]
    predicted: bool
    tile_width: int | None
    orientation: int

    @property
    def colour_samples(self) -> int:
        return COLOUR_SAMPLES[self.photometric]

    @property
    def alpha(self) -> int | None:
        """The kind of alpha (ExtraSamples' value) of the first extra sample that is alpha; None without one."""
        return next((kind for kind in self.extra_samples if kind in ALPHA_KINDS), None)

    @property
    def alpha_sample(self) -> int:
        """Where that extra sample lies among a pixel's samples."""
        return self.colour_samples + [kind in ALPHA_KINDS for kind in self.extra_samples].index(True)


def check(data: bytes) -> Layout | None:
    """From a TIFF's first directory, before Pillow reads it: the layout of a 16-bit image of more than one sample
    a pixel, to be read here; None for the images Pillow reads whole; 400 for samples Pillow would alter or cannot
    read, naming them."""
    entries = tiff_first_directory(data)
    samples = _first(data, entries, SAMPLES, 1)
    bits = _per_sample(data, entries, BITS, samples, 1)
    formats = _per_sample(data, entries, SAMPLE_FORMAT, samples, UNSIGNED)
    photometric = _first(data, entries, PHOTOMETRIC, MIN_IS_BLACK)
    if SIGNED in formats and max(bits) == 8:
        raise InvalidImage("the TIFF image has signed 8-bit samples, which would be read as unsigned (-1 as 255); "
                           "save it with unsigned samples")
    if max(bits) <= 8 or (samples == 1 and photometric != MIN_IS_WHITE):
        return None  # Pillow reads them whole; but it leaves 16-bit white-is-zero grey uninverted, a negative
    planar = _first(data, entries, PLANAR, CHUNKY)
    if (set(bits) != {16} or set(formats) != {UNSIGNED} or photometric not in COLOUR_SAMPLES
            or samples < COLOUR_SAMPLES[photometric] or samples > MOST_SAMPLES or planar != CHUNKY):
        raise InvalidImage(f"the TIFF image has {_describe(bits, formats, photometric, samples, planar)}, which "
                           f"is not read at full depth; send it as 16-bit grey, grey and alpha, RGB or RGBA, one "
                           f"plane, in a PNG or TIFF, or with 8 bits")
    extra = _per_sample(data, entries, EXTRA_SAMPLES, samples - COLOUR_SAMPLES[photometric], 0)
    predicted = (_first(data, entries, PREDICTOR, 1) == HORIZONTAL_PREDICTOR
                 and _first(data, entries, COMPRESSION, 1) in PREDICTED_COMPRESSIONS)
    tile_width = _first(data, entries, TILE_WIDTH, 0) or None
    orientation = _first(data, entries, ORIENTATION, 1)
    return Layout(photometric, samples, extra if samples > COLOUR_SAMPLES[photometric] else (), predicted,
                  tile_width, orientation if 1 <= orientation <= 8 else 1)


def open_as_grey(data: bytes, layout: Layout) -> TiffImagePlugin.TiffImageFile:
    """The image whose samples Pillow reads as grey pixels, ``layout.samples`` times as wide as the image. Opened
    without ``Image.open``'s pixel guard, which would count each sample as a pixel: the caller checks the size."""
    return TiffImagePlugin.TiffImageFile(io.BytesIO(_as_grey(data, layout.samples)))


def stored_size(image: TiffImagePlugin.TiffImageFile, layout: Layout) -> tuple[int, int]:
    """The width and height of an image ``open_as_grey`` opened, as stored (before the orientation)."""
    return image.size[0] // layout.samples, image.size[1]


def pixels(image: TiffImagePlugin.TiffImageFile, layout: Layout) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) 16-bit colour and (H, W) 16-bit alpha or None of an image ``open_as_grey`` opened, as stored (not
    yet turned by the orientation). Closes ``image`` once its samples are copied out, so that Pillow's image is not
    held beside the planes made from them."""
    image.load()
    width, height = stored_size(image, layout)
    samples = np.asarray(image).reshape(height, width, layout.samples)  # read-only, in the file's byte order
    image.close()
    colour = _plane(samples[..., :layout.colour_samples], layout, width)
    if layout.photometric == MIN_IS_WHITE:
        np.subtract(FULL, colour, out=colour)
    if layout.alpha is None:
        return colour, None
    alpha = _plane(samples[..., layout.alpha_sample], layout, width)
    if layout.alpha == ASSOCIATED_ALPHA:
        _unpremultiply(colour, alpha)
    return colour, alpha


def _plane(samples: np.ndarray, layout: Layout, width: int) -> np.ndarray:
    """A contiguous copy of some of the samples, as native 16-bit levels, with the predictor undone."""
    levels = samples.astype(np.uint16, order="C")
    if layout.predicted:
        _undo_predictor(levels, layout.tile_width or width)
    return levels


def _as_grey(data: bytes, samples: int) -> bytes:
    """A copy of ``data`` whose first directory says its samples are grey pixels, ``samples`` times as many a row,
    with the predictor, extra samples and orientation renamed to tags the decoder skips. Only the directory is
    patched apart, so that the file is copied once."""
    entries = tiff_first_directory(data)
    first = min(entry.at for entry in entries.values())
    last = max(entry.at for entry in entries.values())
    big = entries[WIDTH].big
    directory = bytearray(data[first:last + (BIG_ENTRY_BYTES if big else ENTRY_BYTES)])
    # absent, SamplesPerPixel is 1 and Photometric (which Layout requires of a white-is-zero image) black-is-zero
    rewritten = {WIDTH: (LONG, entries[WIDTH].value * samples), SAMPLES: (SHORT, 1),
                 PHOTOMETRIC: (SHORT, MIN_IS_BLACK)}
    if TILE_WIDTH in entries:
        rewritten[TILE_WIDTH] = (LONG, entries[TILE_WIDTH].value * samples)
    for tag, (kind, value) in rewritten.items():
        if tag in entries:
            _rewrite(directory, entries[tag].at - first, entries[tag], tag, kind, value)
    for tag, hidden in HIDDEN.items():
        if tag in entries:
            struct.pack_into(entries[tag].byte_order + "H", directory, entries[tag].at - first, hidden)
    view = memoryview(data)
    return b"".join((view[:first], directory, view[first + len(directory):]))


def _rewrite(directory: bytearray, at: int, entry: TiffEntry, tag: int, kind: int, value: int) -> None:
    """Make ``entry``, at ``at`` in ``directory``, hold the one ``value`` of type ``kind``."""
    head = f"{entry.byte_order}HH{'Q' if entry.big else 'I'}"  # tag, type, count; then the value's field
    field_at, field_bytes = at + struct.calcsize(head), 8 if entry.big else 4
    struct.pack_into(head, directory, at, tag, kind, 1)
    packed = struct.pack(entry.byte_order + ("H" if kind == SHORT else "I"), value)
    directory[field_at:field_at + field_bytes] = packed.ljust(field_bytes, b"\x00")


def _undo_predictor(levels: np.ndarray, segment: int) -> None:
    """Sum the horizontal differences back into levels, modulo 2**16 as they were taken, each row of each strip or
    tile from its left edge."""
    for start in range(0, levels.shape[1], segment):
        np.cumsum(levels[:, start:start + segment], axis=1, dtype=np.uint16, out=levels[:, start:start + segment])


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray) -> None:
    """Associated alpha: the colour stored is multiplied by alpha. Divide it out, as Pillow does for 8 bits; a fully
    transparent pixel's colour is 0."""
    for start in range(0, len(colour), ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        weight = alpha[rows, :, None].astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            levels = np.rint(colour[rows] * (np.float32(FULL) / weight))
        colour[rows] = np.where(weight > 0, np.minimum(levels, FULL), 0)


def _first(data: bytes, entries: dict[int, TiffEntry], tag: int, default: int) -> int:
    values = entries[tag].values(data, 1) if tag in entries else ()
    return values[0] if values else default


def _per_sample(data: bytes, entries: dict[int, TiffEntry], tag: int, samples: int, default: int) -> tuple[int, ...]:
    """A tag's values for ``samples`` samples: one value stands for all of them, as decoders read it."""
    values = entries[tag].values(data, min(samples, MOST_SAMPLES + 1)) if tag in entries else ()
    if not values:
        return (default,) * min(samples, MOST_SAMPLES + 1) or (default,)
    return values if len(values) > 1 else values * min(samples, MOST_SAMPLES + 1)


def _describe(bits: tuple[int, ...], formats: tuple[int, ...], photometric: int, samples: int, planar: int) -> str:
    """'16-bit CMYK samples (4 a pixel)', 'signed 16-bit RGB samples (3 a pixel, in separate planes)', ..."""
    depth = "/".join(str(value) for value in sorted(set(bits)))
    kind = "".join(f"{SAMPLE_KINDS[value]} " for value in sorted(set(formats)) if value in SAMPLE_KINDS)
    name = PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
    planes = ", in separate planes" if planar != CHUNKY else ""
    return f"{kind}{depth}-bit {name} samples ({samples} a pixel{planes})"
