"""Encoding results as PNG (the project's parallel encoder), JPEG or WebP, and what each format can hold."""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from core.errors import InvalidInput
from core.formats import JPEG_FULL_COLOUR_QUALITY, MAX_JPEG_ICC_PROFILE_BYTES, MAX_SIDE, OUTPUT_FORMATS
from core.png_encoder import chunk as png_chunk, encode_png

# Rows converted at a time when changing bit depth, so a 64 MP result needs no full-size temporary.
ROWS_PER_BLOCK = 256
METRES_PER_INCH = 0.0254
PNG_MAX_PER_METRE, PNG_UNIT_METRE = 2**31 - 1, 1  # pHYs: 31-bit pixels per unit; unit 1 is the metre
JPEG_MAX_DPI = 65535  # JFIF: 16-bit dots per inch
# sRGB as PNG's colour chunks write it: cICP's code points (BT.709 primaries, the sRGB transfer, RGB, full
# range), gAMA's exponent and cHRM's white and primaries (x, y of white, red, green, blue), both times 100000.
SRGB_CICP = (1, 13, 0, 1)
SRGB_GAMMA = 45455
SRGB_CHROMATICITIES = (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
# How far they may lie from sRGB's and still be taken as sRGB: libpng's threshold for a gamma that matters (5 %),
# and 0.01 in x or y, within which encoders round sRGB's chromaticities (Adobe RGB's green lies 0.11 away).
GAMMA_TOLERANCE = 0.05
CHROMATICITY_TOLERANCE = 1000
# Formats without grey: Pillow writes a grey image to them as RGB.
WITHOUT_GREY = ("webp",)


def check_output_size(output_format: str, size: tuple[int, int]) -> None:
    """400 when ``output_format`` cannot hold an output of ``size`` (width, height): known from the header."""
    width, height = size
    if max(width, height) > MAX_SIDE[output_format]:
        raise InvalidInput(f"{output_format} holds at most {MAX_SIDE[output_format]} pixels a side and the output "
                           f"would be {width}x{height}; ask for format png")


def check_profile_fits(output_format: str, profile_bytes: int, profile_space: bytes | None) -> None:
    """400 when ``output_format`` cannot hold the ICC profile of ``profile_bytes`` in ``profile_space`` ('RGB ',
    'GRAY') the result carries: known from the header. Without its profile the result would show other colours."""
    if output_format == "jpeg" and profile_bytes > MAX_JPEG_ICC_PROFILE_BYTES:
        raise InvalidInput(f"jpeg holds an ICC profile of at most {MAX_JPEG_ICC_PROFILE_BYTES} bytes and the image's "
                           f"is {profile_bytes} bytes; ask for format png or webp")
    if output_format in WITHOUT_GREY and profile_space == b"GRAY":
        raise InvalidInput(f"{output_format} holds no grey, and the image's grey ICC profile cannot go with the RGB it "
                           f"would be written as; ask for format png or jpeg")


def check_colour_fits(output_format: str, png_colour_chunks: tuple[bytes, ...], profile_bytes: int) -> None:
    """400 when ``output_format`` is jpeg or webp, which hold no PNG colour chunks, and a PNG's chunks say its
    levels are other than sRGB, the colours those formats are read as: its levels written as they are would
    show other colours. The chunks are those the PNG walk carries, each of its one length. An ICC profile (``profile_bytes``), which both formats hold, takes precedence over gAMA
    and cHRM, as an sRGB chunk does."""
    if output_format == "png":
        return
    named = _not_srgb(png_colour_chunks, profile_bytes > 0)
    if named:
        raise InvalidInput(f"the PNG's {' and '.join(named)} {'say' if len(named) > 1 else 'says'} its levels are not "
                           f"sRGB, and {output_format} has no place for {'them' if len(named) > 1 else 'it'}; ask for "
                           f"format png")


def _not_srgb(chunks: tuple[bytes, ...], has_profile: bool) -> list[str]:
    """The names of the colour chunks, in the order PNG ranks them, that map levels to colours other than sRGB's."""
    bodies = {chunk[4:8]: chunk[8:-4] for chunk in chunks}
    cicp = bodies.get(b"cICP")
    if cicp is not None:
        return [] if tuple(cicp) == SRGB_CICP else ["cICP"]  # ranks above all the others
    if b"sRGB" in bodies or has_profile:
        return []
    named = []
    gamma = bodies.get(b"gAMA")
    if gamma is not None and abs(int.from_bytes(gamma, "big") / SRGB_GAMMA - 1) > GAMMA_TOLERANCE:
        named.append("gAMA")
    primaries = bodies.get(b"cHRM")
    if primaries is not None and any(
            abs(value - srgb) > CHROMATICITY_TOLERANCE
            for value, srgb in zip(struct.unpack(">8I", primaries), SRGB_CHROMATICITIES)):
        named.append("cHRM")
    return named


def alpha_for(output_format: str, alpha: np.ndarray | None) -> np.ndarray | None:
    """The alpha channel ``output_format`` gets: jpeg has none, so one that is fully opaque is dropped (nothing
    is lost) and a real one is a 400."""
    if output_format != "jpeg" or alpha is None:
        return alpha
    transparent = int(np.count_nonzero(alpha != np.iinfo(alpha.dtype).max))
    if transparent:
        raise InvalidInput(f"jpeg cannot hold transparency and {transparent} of the image's pixels are "
                           f"transparent; ask for format png or webp")
    return None


def encode(colour: np.ndarray, alpha: np.ndarray | None, icc_profile: bytes | None,
           output_format: str, quality: int, png_level: int, threads: int,
           png_colour_chunks: tuple[bytes, ...] = (), dpi: tuple[float, float] | None = None) -> bytes:
    """Encode pixels as png (deflate level ``png_level`` on ``threads`` threads), jpeg or webp; 16-bit pixels stay
    16-bit in PNG and are rounded to 8 bits otherwise. ``png_colour_chunks`` (an input PNG's gAMA, cHRM, sRGB, ...)
    go into png output only: jpeg and webp have no place for them. ``dpi`` (across, down) goes into png (pHYs) and
    jpeg (JFIF) where they can hold it; webp has no place for it."""
    pil_format, _ = OUTPUT_FORMATS[output_format]
    if pil_format == "JPEG" and alpha is not None:
        raise InvalidInput("jpeg cannot hold an alpha channel; ask for format png or webp")
    if pil_format == "PNG":
        return encode_png(colour, icc_profile, png_level, threads, _at_depth(alpha, colour.dtype),
                          (*png_colour_chunks, *_png_resolution(dpi)))
    image = _to_pillow(_with_alpha(_to_8bit(colour), alpha))
    options: dict[str, object] = {"quality": quality}
    if pil_format == "JPEG":
        options["subsampling"] = "4:4:4" if quality >= JPEG_FULL_COLOUR_QUALITY else "4:2:0"
        options.update(_jpeg_resolution(dpi))
    if icc_profile and not (output_format in WITHOUT_GREY and colour.shape[-1] == 1):
        # A grey image's profile is a GRAY one (core/images.py keeps no other), which RGB pixels cannot carry: a
        # request for such a format is refused (check_profile_fits), and the page's layers are always PNG.
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def _png_resolution(dpi: tuple[float, float] | None) -> tuple[bytes, ...]:
    """A pHYs chunk of ``dpi`` in pixels per metre, as PNG stores it; none past what its 31 bits hold."""
    if dpi is None:
        return ()
    per_metre = [round(value / METRES_PER_INCH) for value in dpi]
    if not all(1 <= value <= PNG_MAX_PER_METRE for value in per_metre):
        return ()
    return (b"".join(png_chunk(b"pHYs", [struct.pack(">IIB", *per_metre, PNG_UNIT_METRE)])),)


def _jpeg_resolution(dpi: tuple[float, float] | None) -> dict[str, object]:
    """Pillow's ``dpi`` option, whole dots per inch as JFIF stores them; none past its 16 bits."""
    if dpi is None:
        return {}
    whole = tuple(round(value) for value in dpi)
    return {"dpi": whole} if all(1 <= value <= JPEG_MAX_DPI for value in whole) else {}


def _to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Round 16-bit levels to the nearest 8-bit level (65535 -> 255), a block of rows at a time."""
    if pixels.dtype == np.uint8:
        return pixels
    out = np.empty(pixels.shape, np.uint8)
    for start in range(0, len(pixels), ROWS_PER_BLOCK):
        out[start:start + ROWS_PER_BLOCK] = np.rint(pixels[start:start + ROWS_PER_BLOCK] / np.float32(257))
    return out


def _at_depth(alpha: np.ndarray | None, dtype: np.dtype) -> np.ndarray | None:
    """The alpha plane at the colour's bit depth."""
    return alpha if alpha is None or dtype == np.uint16 else _to_8bit(alpha)


def _with_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(H, W, C) colour with the alpha plane appended, at the colour's bit depth."""
    if alpha is None:
        return colour
    return np.concatenate([colour, _at_depth(alpha, colour.dtype)[..., None]], axis=-1)


def _to_pillow(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
