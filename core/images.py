"""Decoding uploads into arrays and encoding results, with Pillow (and pypng for 16-bit colour).

A decoded image is split into colour (grey or RGB, 8 or 16 bits) and an
optional alpha channel, so that the network sees colour only and the alpha
channel can be upscaled on its own and put back.

Every way an upload can be wrong ends as ``InvalidImage`` (400) or
``TooLarge`` (413): the container is checked before any decoder runs, the
pixel count is checked from the header before any pixel is allocated, and
whatever a decoder raises on corrupt data is turned into a message.
"""
from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import png
from PIL import ExifTags, Image, UnidentifiedImageError

from core.errors import InvalidImage, InvalidInput, TooLarge
from core.formats import OUTPUT_FORMATS
from core.png_encoder import SIGNATURE as PNG_SIGNATURE
from core.png_encoder import encode_png

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
# Widest or tallest image each output format can hold.
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}

# Magic numbers: the first bytes decide which single decoder may read the upload.
SIGNATURES = (
    (PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
PNG_CRITICAL_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")

# What decoders raise on corrupt data: Pillow's plugins and pypng use all of these.
CORRUPT_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                       TypeError, ZeroDivisionError, zlib.error, png.Error)

# Scans a JPEG may hold. Encoders write 1 (baseline), 3 (non-interleaved), 6 or 10 (libjpeg's progressive
# script for grey or colour) and mozjpeg's searched scripts stay within a few dozen; each scan costs a full
# pass of the decoder over the image, so a file of a million empty scans decodes for minutes.
MAX_JPEG_SCANS = 100
# Markers without a length field: SOI, EOI, TEM and the restart markers.
JPEG_STANDALONE_MARKERS = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
# The next marker after entropy-coded data: 0xFF, any fill bytes, then neither a stuffed 0x00 nor a restart marker.
JPEG_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")

# Rows converted at a time when changing bit depth, so a 64 MP result needs no full-size temporary.
ROWS_PER_BLOCK = 256


@dataclass(frozen=True)
class DecodedImage:
    colour: np.ndarray            # (H, W, 1) grey or (H, W, 3) RGB; uint8 or uint16
    alpha: np.ndarray | None      # (H, W), same dtype as colour
    icc_profile: bytes | None

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
class PngHeader:
    width: int
    height: int
    bit_depth: int
    exif: bytes | None


def describe_accepted() -> str:
    return ", ".join(ACCEPTED_FORMATS)


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode ``data``; 400 when it is not an accepted image, 413 when it has too many pixels."""
    if not data:
        raise InvalidImage(f"the upload is empty; send an image ({describe_accepted()})")
    image_format = sniff_format(data)
    png_header = _check_png(data, max_pixels) if image_format == "PNG" else None
    if image_format == "GIF":
        _check_gif(data)
    if image_format == "WEBP":
        _check_riff_end(data)
    if image_format == "JPEG":
        _check_jpeg_scans(data)
    with _reading(image_format, max_pixels):
        image = Image.open(io.BytesIO(data), formats=(image_format,))
        check_pixels(image.size, max_pixels)
        if png_header is not None and png_header.bit_depth == 16:
            colour, alpha = _png16_pixels(data)
            icc, orientation = image.info.get("icc_profile"), _exif_orientation(png_header.exif)
        else:
            image.load()
            colour, alpha, icc = _pillow_pixels(image)
            orientation = _orientation(image)
    return DecodedImage(_orient(colour, orientation), None if alpha is None else _orient(alpha, orientation),
                        _matching_profile(icc, colour.shape[-1]))


def oriented_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as displayed, after EXIF orientation, from the header alone, decoding nothing;
    None when the header does not read (decode then reports it with the proper message)."""
    try:
        with Image.open(io.BytesIO(data), formats=(sniff_format(data),)) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (InvalidImage, UnidentifiedImageError, Image.DecompressionBombError, *CORRUPT_DATA_ERRORS):
        return None
    if width <= 0 or height <= 0:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def sniff_format(data: bytes) -> str:
    """The accepted format ``data`` starts like; 400 naming the accepted ones when it starts like none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, image_format in SIGNATURES:
        if data.startswith(signature):
            return image_format
    raise InvalidImage(f"the upload is not an image in an accepted format ({describe_accepted()}): "
                       f"its first bytes match none of them")


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """400 for an image without pixels, 413 for one over ``max_pixels``; the message names both sizes."""
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(f"the image is {width}x{height} = {width * height} pixels; "
                       f"the limit is {max_pixels} input pixels (MAX_INPUT_PIXELS)")


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
        raise TooLarge(f"the image has {size}; the limit is {max_pixels} input pixels (MAX_INPUT_PIXELS)") from error
    except UnidentifiedImageError as error:
        raise InvalidImage(f"the upload starts like a {image_format} file but is not a readable {image_format} "
                           f"image") from error
    except CORRUPT_DATA_ERRORS as error:
        raise InvalidImage(f"the {image_format} image is corrupt or truncated ({error})") from error


# --- Containers: structure checks that need no decoder ------------------------------------------


def _check_png(data: bytes, max_pixels: int) -> PngHeader:
    """Walk the chunks: sizes from IHDR before any pixel, CRCs of critical chunks, nothing after IEND."""
    view = memoryview(data)
    header: PngHeader | None = None
    exif = None
    pixel_data: list[memoryview] = []
    position = len(PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise InvalidImage("the PNG image is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if not kind.isalpha():
            raise InvalidImage(f"the PNG image is corrupt: {kind!r} at byte {position + 4} is not a chunk type")
        end = position + 12 + length
        if end > len(data):
            raise InvalidImage(f"the PNG image is truncated: its {kind.decode()} chunk runs past the end of the file")
        body = view[position + 8:end - 4]
        _check_png_chunk(kind, body, view[end - 4:end], first=header is None)
        if header is None:
            width, height, bit_depth, colour_type = struct.unpack(">IIBB", body[:10])
            check_pixels((width, height), max_pixels)
            header = PngHeader(width, height, bit_depth, None)
        elif kind == b"eXIf":
            exif = bytes(body)
        elif kind == b"IDAT":
            pixel_data.append(body)
        position = end
        if kind == b"IEND":
            break
    if position != len(data):
        raise InvalidImage(f"the PNG image has {len(data) - position} bytes after its IEND chunk "
                           f"(another file appended to it, e.g. a polyglot); only a plain PNG is accepted")
    if header.bit_depth == 16:
        _check_inflated_size(pixel_data, header, colour_type)
    return PngHeader(header.width, header.height, header.bit_depth, exif)


def _check_inflated_size(pixel_data: list[memoryview], header: PngHeader, colour_type: int) -> None:
    """Refuse IDAT that inflates past what the header declares (a zlib bomb), 1 MiB at a time.

    Pillow inflates only into the image it allocated; pypng, which reads 16-bit PNGs, has no such bound.
    """
    planes = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 4)
    # twice the raw size: room for the extra filter bytes of Adam7 interlacing
    limit = 2 * header.height * (1 + header.width * planes * 2) + 64
    inflater = zlib.decompressobj()
    inflated = 0
    try:
        for body in pixel_data:
            pending: bytes | memoryview = body
            while pending:
                inflated += len(inflater.decompress(pending, 1 << 20))
                if inflated > limit:
                    raise InvalidImage(f"the PNG image's pixel data inflates to more than {limit} bytes, "
                                       f"far more than {header.width}x{header.height} pixels need (a zlib bomb)")
                pending = inflater.unconsumed_tail
    except zlib.error as error:
        raise InvalidImage(f"the PNG image's pixel data is corrupt ({error})") from error


def _check_png_chunk(kind: bytes, body: memoryview, crc: memoryview, first: bool) -> None:
    if first and (kind != b"IHDR" or len(body) != 13):
        raise InvalidImage("the PNG image is corrupt: it does not start with a 13-byte IHDR chunk")
    if kind[:1].isupper() and kind not in PNG_CRITICAL_CHUNKS:
        raise InvalidImage(f"the PNG image has an unknown critical chunk {kind.decode()!r}")
    if kind in PNG_CRITICAL_CHUNKS and zlib.crc32(body, zlib.crc32(kind)) != struct.unpack(">I", crc)[0]:
        raise InvalidImage(f"the PNG image is corrupt: the checksum of its {kind.decode()} chunk is wrong")


def _check_gif(data: bytes) -> None:
    """Reject an empty logical screen, and bytes after the trailer (where a GIF/JavaScript polyglot hides its script).

    Pillow would quietly size a 0x0 screen from its first frame; viewers show nothing.
    """
    if len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        if not width or not height:
            raise InvalidImage(f"the GIF image has no pixels: its logical screen is {width}x{height}")
    end = _gif_end(data)
    if end is not None and end < len(data):
        raise InvalidImage(f"the GIF image has {len(data) - end} bytes after its trailer "
                           f"(another file appended to it, e.g. a polyglot); only a plain GIF is accepted")


def _gif_end(data: bytes) -> int | None:
    """Offset just past the GIF trailer; None when the blocks end early (the decoder judges those)."""
    if len(data) < 13:
        return None
    position = 13 + _colour_table_size(data[10])
    while position < len(data):
        block = data[position]
        if block == 0x3B:
            return position + 1
        if block == 0x21:
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C and position + 10 <= len(data):
            position = _skip_sub_blocks(data, position + 11 + _colour_table_size(data[position + 9]))
        else:
            return None
    return None


def _colour_table_size(flags: int) -> int:
    return 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, position: int) -> int:
    while position < len(data):
        size = data[position]
        position += 1 + size
        if size == 0:
            return position
    return len(data) + 1


def _check_jpeg_scans(data: bytes) -> None:
    """Count the scans from the markers alone, and refuse a file with more than any encoder writes.

    Segments before and between scans are skipped by their length (an EXIF thumbnail's markers are not
    counted); the entropy-coded data after a scan header is skipped to the next marker. A walk that loses
    its way stops, and the decoder judges the rest.
    """
    scans, position = 0, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:
            return
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImage(f"the JPEG image has more than {MAX_JPEG_SCANS} scans; encoders write at most "
                                   f"a few dozen, and each scan costs a full decoding pass (a scan bomb)")
            following = JPEG_NEXT_MARKER.search(data, position)
            if following is None:
                return
            position = following.start(1) - 1


def _check_riff_end(data: bytes) -> None:
    """A WebP file is one RIFF chunk whose header gives its length: nothing may follow it."""
    size = struct.unpack("<I", data[4:8])[0]
    end = 8 + size + (size & 1)
    if len(data) > end:
        raise InvalidImage(f"the WEBP image has {len(data) - end} bytes after its RIFF chunk "
                           f"(another file appended to it, e.g. a polyglot); only a plain WebP is accepted")


# --- Pixels -------------------------------------------------------------------------------------


def _png16_pixels(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit PNG (grey, grey+alpha, RGB, RGBA) with every level kept; Pillow would cut colour to 8 bits."""
    width, height, rows, info = png.Reader(bytes=data).read()
    planes = info["planes"]
    pixels = np.vstack([np.frombuffer(row, np.uint16) for row in rows]).reshape(height, width, planes)
    if info["alpha"]:
        return np.ascontiguousarray(pixels[..., :-1]), np.ascontiguousarray(pixels[..., -1])
    key = info.get("transparent")
    if key is not None:  # tRNS: one colour is fully transparent
        alpha = np.where((pixels == np.asarray(key, np.uint16).reshape(-1)).all(axis=-1), 0, 65535)
        return pixels, alpha.astype(np.uint16)
    return pixels, None


def _pillow_pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    icc = image.info.get("icc_profile")
    if image.mode == "F":
        raise InvalidImage("32-bit floating-point images are not supported; save the image with 8 or 16 bits")
    if image.mode.startswith("I"):  # I;16, I;16B, I: integer grey, kept at 16 bits
        grey = np.asarray(image).astype(np.int64).clip(0, 65535).astype(np.uint16)
        return grey[..., None], None, icc
    if image.mode == "CMYK":
        icc = None  # a CMYK profile does not describe the RGB the image is converted to
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    grey = image.mode in ("1", "L", "LA", "La") or (image.mode == "P" and _palette_is_grey(image)
                                                    and _profile_space(icc) != b"RGB ")
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    colour = np.ascontiguousarray(pixels[..., :1] if grey else pixels[..., :3])
    return colour, np.ascontiguousarray(pixels[..., 3]) if has_alpha else None, icc


def _palette_is_grey(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def _profile_space(icc: bytes | None) -> bytes | None:
    """The colour space an ICC profile describes ('RGB ', 'GRAY', 'CMYK', ...), from its header."""
    return icc[16:20] if isinstance(icc, bytes) and len(icc) >= 128 else None


def _matching_profile(icc: bytes | None, channels: int) -> bytes | None:
    """Keep the profile only when it describes the colour we output: a mismatched one would mislead viewers."""
    return icc if _profile_space(icc) == (b"GRAY" if channels == 1 else b"RGB ") else None


# --- EXIF orientation ---------------------------------------------------------------------------


def _orientation(image: Image.Image) -> int:
    try:
        return _valid_orientation(image.getexif().get(ExifTags.Base.Orientation, 1))
    except CORRUPT_DATA_ERRORS:
        return 1  # unreadable EXIF: viewers show such images unrotated, and so do we


def _exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    try:
        tags = Image.Exif()
        tags.load(exif if exif.startswith(b"Exif") else b"Exif\x00\x00" + exif)
        return _valid_orientation(tags.get(ExifTags.Base.Orientation, 1))
    except CORRUPT_DATA_ERRORS:
        return 1


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
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


# --- Output -------------------------------------------------------------------------------------


def fit_output(image: DecodedImage, output_format: str, size: tuple[int, int]) -> DecodedImage:
    """Check, before any upscaling, that ``output_format`` can hold the result of ``size`` (width, height).

    jpeg has no alpha: an alpha channel that is fully opaque is dropped (nothing is lost), a real one is a 400.
    """
    width, height = size
    if max(width, height) > MAX_SIDE[output_format]:
        raise InvalidInput(f"{output_format} holds at most {MAX_SIDE[output_format]} pixels a side and the output "
                           f"would be {width}x{height}; ask for format png")
    if output_format != "jpeg" or image.alpha is None:
        return image
    transparent = int(np.count_nonzero(image.alpha != image.max_value))
    if transparent:
        raise InvalidInput(f"jpeg cannot hold transparency and {transparent} of the image's pixels are "
                           f"transparent; ask for format png or webp")
    return DecodedImage(image.colour, None, image.icc_profile)


def resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W) channel to ``size`` (width, height) with Lanczos, in float, keeping its dtype."""
    resized = Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.rint(np.asarray(resized)), 0, np.iinfo(channel.dtype).max).astype(channel.dtype)


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) pixels of any channel count and dtype to ``size`` with Lanczos."""
    return np.stack([resize_channel(pixels[..., c], size) for c in range(pixels.shape[-1])], axis=-1)


def encode(colour: np.ndarray, alpha: np.ndarray | None, icc_profile: bytes | None,
           output_format: str, quality: int, png_level: int, threads: int) -> bytes:
    """Encode pixels as png (zlib level ``png_level`` on ``threads`` threads), jpeg or webp; 16-bit pixels stay
    16-bit in PNG and are rounded to 8 bits otherwise."""
    pil_format, _ = OUTPUT_FORMATS[output_format]
    if pil_format == "JPEG" and alpha is not None:
        raise InvalidInput("jpeg cannot hold an alpha channel; ask for format png or webp")
    if pil_format == "PNG":
        return encode_png(_with_alpha(colour, alpha), icc_profile, png_level, threads)
    image = _to_pillow(_with_alpha(_to_8bit(colour), alpha))
    options: dict[str, object] = {"quality": quality}
    if icc_profile:
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def _to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Round 16-bit levels to the nearest 8-bit level (65535 -> 255), a block of rows at a time."""
    if pixels.dtype == np.uint8:
        return pixels
    out = np.empty(pixels.shape, np.uint8)
    for start in range(0, len(pixels), ROWS_PER_BLOCK):
        out[start:start + ROWS_PER_BLOCK] = np.rint(pixels[start:start + ROWS_PER_BLOCK] / np.float32(257))
    return out


def _with_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(H, W, C) colour with the alpha plane appended, at the colour's bit depth."""
    if alpha is None:
        return colour
    return np.concatenate([colour, (alpha if colour.dtype == np.uint16 else _to_8bit(alpha))[..., None]], axis=-1)


def _to_pillow(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
