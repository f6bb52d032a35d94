"""Decoding uploads into arrays, with Pillow (and pypng for 16-bit colour): the header first, then the pixels.

A decoded image is split into colour (grey or RGB, 8 or 16 bits) and an
optional alpha channel, so that the network sees colour only and the alpha
channel can be upscaled on its own and put back.

Every way an upload can be wrong ends as ``InvalidImage`` (400) or
``TooLarge`` (413): ``read_header`` checks the container (core/containers.py) before any decoder runs
and the pixel count before any pixel is allocated, and whatever a decoder raises on corrupt data is
turned into a message. A request reads the header once (``Service.prepare``) and decodes from it.
"""
from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from numbers import Real

import numpy as np
import png
from PIL import Image, ImageCms, UnidentifiedImageError

from core import orientation, tiff16
from core.containers import (ACCEPTED_FORMATS, CORRUPT_DATA_ERRORS, PngHeader, WithoutSpans, check, check_pixels,
                             describe_accepted, sniff_format, tiff_second_directory)
from core.errors import InvalidImage, TooManyPixels


# The colour spaces of the ICC profiles a result carries: the others (CMYK) are used to convert the pixels.
CARRIED_PROFILE_SPACES = (b"RGB ", b"GRAY")
# Formats whose further frames are the rest of an animation.
ANIMATION_FORMATS = ("GIF", "PNG", "WEBP")
# A TIFF directory's NewSubfileType tag, and its bits for a directory that is not a page of its own.
TIFF_NEW_SUBFILE_TYPE = 254
TIFF_REDUCED_RESOLUTION, TIFF_TRANSPARENCY_MASK = 1, 4
TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION = 282, 283


@dataclass(frozen=True)
class DecodedImage:
    colour: np.ndarray            # (H, W, 1) grey or (H, W, 3) RGB; uint8 or uint16
    alpha: np.ndarray | None      # (H, W), same dtype as colour
    icc_profile: bytes | None
    png_colour_chunks: tuple[bytes, ...] = ()  # a PNG's gAMA, cHRM, sRGB, ... (core/containers.py)
    dpi: tuple[float, float] | None = None  # (across, down) as displayed

    @property
    def height(self) -> int:
        return self.colour.shape[0]

    @property
    def width(self) -> int:
        return self.colour.shape[1]

    @property
    def max_value(self) -> int:
        return int(np.iinfo(self.colour.dtype).max)


@dataclass(frozen=True)
class Header:
    """What an upload's header says, read once: its format, its size as displayed, how to turn it."""

    image_format: str
    width: int  # as displayed, after the EXIF orientation
    height: int
    orientation: int
    png: PngHeader | None
    tiff16: tiff16.Layout | None  # a 16-bit TIFF read here rather than by Pillow (core/tiff16.py)
    max_pixels: int
    # At most the samples of one pixel of the result, alpha included, and the bytes of a sample: core/memory.py
    # sizes the request's buffers by them.
    samples: int
    sample_bytes: int
    # The ICC profile the result may carry (an RGB or grey one): its length (else 0) and colour space
    profile_bytes: int = 0
    profile_space: bytes | None = None
    # The ICC profile the upload stores, whatever its colour space: decoding copies it (core/memory.py)
    stored_profile_bytes: int = 0
    # Where the metadata lies that the decoder is not shown, and the bytes of what it is shown and copies
    # (core/containers.py)
    hidden: tuple[tuple[int, int], ...] = ()
    metadata_bytes: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def png16(self) -> bool:
        """pypng reads it, keeping every level; Pillow would cut colour to 8 bits."""
        return self.png is not None and self.png.bit_depth == 16

    @property
    def alpha(self) -> bool:
        """Whether the result may have an alpha plane."""
        return self.samples in (2, 4)

    @property
    def pixel_bytes(self) -> int:
        return self.samples * self.sample_bytes


def accepted_formats() -> list[dict[str, object]]:
    """Each accepted upload format with its media type and the file name suffixes Pillow registers for it, for
    /model/metadata: the page's file chooser offers these. The server itself goes by the first bytes alone."""
    suffixes = Image.registered_extensions()  # fills Image.MIME too
    return [{"format": name, "content_type": Image.MIME[name],
             "suffixes": sorted(suffix for suffix, owner in suffixes.items() if owner == name)}
            for name in ACCEPTED_FORMATS]


def read_header(data: bytes, max_pixels: int) -> Header:
    """The header of ``data``, decoding no pixel; 400 when it is not an accepted image, 413 when it has
    more than ``max_pixels`` pixels."""
    if not data:
        raise InvalidImage(f"the upload is empty; send an image ({describe_accepted()})")
    image_format = sniff_format(data)
    container = check(data, image_format, max_pixels)
    png_header = container.png
    with _reading(image_format, max_pixels):
        layout = tiff16.check(data) if image_format == "TIFF" else None
    with _reading(image_format, max_pixels), _open(data, image_format, layout, container.hidden) as image:
        stored = tiff16.stored_size(image, layout) if layout else image.size
        check_pixels(stored, max_pixels)
        _check_one_picture(image, data)
        if image.mode == "F":
            raise InvalidImage("32-bit floating-point images are not supported; save the image with 8 or 16 bits")
        turn = layout.orientation if layout else _turn_to_apply(image, png_header)
        width, height = orientation.displayed(*stored, turn)
        sixteen = (png_header and png_header.bit_depth == 16) or layout or image.mode.startswith("I")
        sample_bytes = 2 if sixteen else 1
        samples = layout.colour_samples + (layout.alpha is not None) if layout else _samples_at_most(image)
        profile = image.info.get("icc_profile") or b""
        space = _profile_space(profile)
        carried = len(profile) if space in CARRIED_PROFILE_SPACES else 0
    # Its eXIf chunk is a view into the upload, read for the orientation above: kept, it would hold the upload's
    # bytes while the request waits in the queue and beside the ones its run reads again (core/upload.py).
    png_header = replace(png_header, exif=None) if png_header else None
    return Header(image_format, width, height, turn, png_header, layout, max_pixels, samples, sample_bytes,
                  carried, space if carried else None, len(profile), container.hidden,
                  container.metadata_bytes)


def _open(data: bytes, image_format: str, layout: tiff16.Layout | None,
          hidden: tuple[tuple[int, int], ...]) -> Image.Image:
    """The upload opened by the one decoder its first bytes name, its header read and no pixel; without the
    ``hidden`` metadata, which the decoder would hold and the result does not carry (core/containers.py)."""
    if layout:
        return tiff16.open_as_grey(data, layout)
    return Image.open(WithoutSpans(data, hidden) if hidden else io.BytesIO(data), formats=(image_format,))


def _turn_to_apply(image: Image.Image, png_header: PngHeader | None) -> int:
    """The EXIF orientation left for ``decode_pixels`` to apply to the pixels Pillow gives."""
    if image.format == "TIFF":
        return 1  # Pillow opens a TIFF at its displayed size and turns its pixels as it loads them
    if png_header:
        # From the chunk walk: Pillow's getexif decodes every pixel of a PNG to look past its IDAT.
        return orientation.from_exif(png_header.exif)
    return orientation.of_image(image)


def _check_one_picture(image: Image.Image, data: bytes) -> None:
    """400 for an animation (GIF, WebP, APNG) or a TIFF of several pages: the answer would be its first frame or
    page, the others dropped without a word. A JPEG's further pictures (MPO: a phone's preview or depth map, a
    stereo camera's other eye) and a TIFF's reduced-resolution copy or transparency mask are not the picture, and
    are left out."""
    if image.format in ANIMATION_FORMATS and getattr(image, "is_animated", False):
        raise InvalidImage(f"the {image.format} image is an animation of more than one frame, and only still "
                           f"images are upscaled; send one frame (as PNG, say)")
    second = tiff_second_directory(data) if image.format == "TIFF" else None
    if second is not None:
        kind = second[TIFF_NEW_SUBFILE_TYPE].value if TIFF_NEW_SUBFILE_TYPE in second else 0
        if not kind & (TIFF_REDUCED_RESOLUTION | TIFF_TRANSPARENCY_MASK):
            raise InvalidImage("the TIFF image has more than one page, and only single images are upscaled; "
                               "send one page")


def _samples_at_most(image: Image.Image) -> int:
    """The samples per pixel the result will have at most, from the mode alone: a palette's colours and
    transparency are known only once its pixels are read, so it counts as RGBA."""
    if image.mode in ("1", "L") or image.mode.startswith("I"):
        return 1 + ("transparency" in image.info)
    if image.mode in ("LA", "La"):
        return 2
    if image.mode in ("RGB", "CMYK", "YCbCr"):
        return 3 + ("transparency" in image.info)
    return 4


def decode_pixels(data: bytes, header: Header) -> DecodedImage:
    """The pixels of ``data`` whose ``header`` has been read; 400 where they turn out corrupt."""
    with _reading(header.image_format, header.max_pixels):
        image = _open(data, header.image_format, header.tiff16, header.hidden)
        # Pillow turns a TIFF's pixels itself (the header's turn is then 1, but for core/tiff16.py's), not its
        # resolution
        pillow_turns = image.format == "TIFF" and not header.tiff16
        dpi = _dpi(_stored_dpi(image), orientation.of_image(image) if pillow_turns else header.orientation)
        if header.tiff16:
            colour, alpha = tiff16.pixels(image, header.tiff16)
            icc = image.info.get("icc_profile")
        elif header.png16:
            colour, alpha = _png16_pixels(data, header.hidden)
            icc = image.info.get("icc_profile")
        else:
            image.load()
            if header.png:
                _scale_grey_key(image, header.png.bit_depth)
            colour, alpha, icc = _pillow_pixels(image)
    return DecodedImage(orientation.apply(colour, header.orientation),
                        None if alpha is None else orientation.apply(alpha, header.orientation),
                        _matching_profile(icc, colour.shape[-1]), header.png.colour_chunks if header.png else (), dpi)


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Header and pixels in one call, for a caller without a plan (the benchmarks, the evaluation harness)."""
    return decode_pixels(data, read_header(data, max_pixels))


def guard_decompression_bombs(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard from the input pixel limit, for this process.

    The header check in ``decode`` is the one that answers with the limit and the size; Pillow's
    guard backs it up inside ``Image.open`` for any plugin that sizes an image later. It is one
    global for the process, so the process that serves (``Service.create``) sets it, not ``decode``.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


@contextmanager
def _reading(image_format: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever a decoder raises on bad data into a 400 or 413 that says what was wrong.

    Our own check runs on the header's size before any pixel is decoded; Pillow's bomb guard
    (see ``guard_decompression_bombs``) can still fire first inside ``Image.open`` for huge sizes.
    """
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{found.group(1)} pixels" if found else f"more than {max_pixels} pixels"
        raise TooManyPixels(f"the image has {size}; the limit is {max_pixels} input pixels (MAX_INPUT_PIXELS)"
                            ) from error
    except UnidentifiedImageError as error:
        raise InvalidImage(f"the upload starts like a {image_format} file but is not a readable {image_format} "
                           f"image") from error
    except CORRUPT_DATA_ERRORS as error:
        raise InvalidImage(f"the {image_format} image is corrupt or truncated ({error})") from error


def _png16_pixels(data: bytes, hidden: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit PNG (grey, grey+alpha, RGB, RGBA) with every level kept; Pillow would cut colour to 8 bits. pypng too
    is not shown the ``hidden`` chunks, each of which it would read whole."""
    width, height, rows, info = png.Reader(file=WithoutSpans(data, hidden)).read()
    planes = info["planes"]
    pixels = np.vstack([np.frombuffer(row, np.uint16) for row in rows]).reshape(height, width, planes)
    if info["alpha"]:
        return np.ascontiguousarray(pixels[..., :-1]), np.ascontiguousarray(pixels[..., -1])
    key = info.get("transparent")
    if key is not None:  # tRNS: one colour is fully transparent
        alpha = np.where((pixels == np.asarray(key, np.uint16).reshape(-1)).all(axis=-1), 0, 65535)
        return pixels, alpha.astype(np.uint16)
    return pixels, None


def _scale_grey_key(image: Image.Image, bit_depth: int) -> None:
    """Pillow scales a 2- or 4-bit grey PNG's levels to 8 bits (1 to 85 at 2 bits) but not its transparent level
    (tRNS), which then matches no pixel, or another level, and the transparency is lost: scale it alike."""
    key = image.info.get("transparency")
    if image.mode == "L" and bit_depth in (2, 4) and isinstance(key, int):
        image.info["transparency"] = key * (255 // (2**bit_depth - 1))


def _pillow_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    icc = image.info.get("icc_profile")
    if image.mode.startswith("I"):  # I;16, I;16B, I: integer grey, kept at 16 bits
        return _grey_16_bit(np.asarray(image))[..., None], None, icc
    if image.mode == "CMYK":
        image, icc = _cmyk_as_srgb(image, icc), None  # sRGB, the colour space assumed without a profile
    if image.mode == "La":
        image = image.convert("LA")  # grey with associated alpha, which Pillow converts to LA alone
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    grey = image.mode in ("1", "L", "LA", "La") or (image.mode == "P" and _palette_is_grey(image)
                                                    and _profile_space(icc) != b"RGB ")
    mode = "RGBA" if has_alpha else "RGB"
    pixels = np.asarray(image if image.mode == mode else image.convert(mode))
    colour = np.ascontiguousarray(pixels[..., :1] if grey else pixels[..., :3])
    return colour, np.ascontiguousarray(pixels[..., 3]) if has_alpha else None, icc


def _grey_16_bit(levels: np.ndarray) -> np.ndarray:
    """Integer grey as 16-bit levels; 400 for a 32-bit or signed 16-bit image (Pillow reads both as 32-bit) with
    levels outside 0..65535, which clipping would flatten (negative levels, counts past 65535) into a different
    picture."""
    if levels.dtype == np.uint16:
        return levels
    lowest, highest = int(levels.min()), int(levels.max())
    if lowest < 0 or highest > 65535:
        raise InvalidImage(f"the integer grey image has levels from {lowest} to {highest}, and 0 to 65535 (16 bits, "
                           f"unsigned) are the most that are kept; save the image with unsigned 8 or 16 bits")
    return levels.astype(np.uint16)


def _cmyk_as_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK pixels in sRGB: through the image's own CMYK profile where it has one, since a press's inks are far
    from Pillow's 255 - C - K (cyan ink is not the screen's 0, 255, 255). Without a profile, or with one that
    cannot be read (viewers ignore such a profile too), Pillow's conversion."""
    if _profile_space(icc) == b"CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB",
                                             renderingIntent=ImageCms.Intent.PERCEPTUAL)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("RGB")


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _palette_is_grey(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def _profile_space(icc: bytes | None) -> bytes | None:
    """The colour space an ICC profile describes ('RGB ', 'GRAY', 'CMYK', ...), from its header."""
    return icc[16:20] if isinstance(icc, bytes) and len(icc) >= 128 else None


def _stored_dpi(image: Image.Image) -> object:
    """Pillow's ``dpi``, but for a TIFF without resolution tags, to which Pillow gives 1 dpi."""
    if image.format == "TIFF" and not {TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION} <= image.tag_v2.keys():
        return None
    return image.info.get("dpi")


def _dpi(stored: object, turn: int) -> tuple[float, float] | None:
    """The resolution Pillow read (a PNG's pHYs, a JPEG's JFIF or EXIF, a TIFF's or BMP's), across and down as
    displayed; None where there is none, or none with a size (0, not a number)."""
    if not (isinstance(stored, tuple) and len(stored) == 2 and all(isinstance(value, Real) for value in stored)):
        return None
    across, down = (float(value) for value in stored)  # a TIFF's are fractions
    if not (0 < across < math.inf and 0 < down < math.inf):
        return None
    return (down, across) if turn in orientation.QUARTER_TURNS else (across, down)


def _matching_profile(icc: bytes | None, channels: int) -> bytes | None:
    """Keep the profile only when it describes the colour we output: a mismatched one would mislead viewers."""
    return icc if _profile_space(icc) == (b"GRAY" if channels == 1 else b"RGB ") else None
