"""Decoding and encoding with real Pillow and pypng: every mode, metadata, limits and bad input."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import png
import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, TiffImagePlugin

from core import containers, encoding, images, memory
from core.formats import MAX_JPEG_ICC_PROFILE_BYTES, OUTPUT_FORMATS
from core.resize import BLEED_REACH, bleed_into_transparency, resize
from core.errors import InvalidImage, InvalidInput, TooLarge
from tests.conftest import encode
from harness.cmyk_profile import cmyk_profile, ink_srgb
from harness.raw_http import scan_bomb

LIMIT = 64 * 64


# --- Sample builders (also used by the API tests) -----------------------------------------------


def pattern(height: int = 16, width: int = 16) -> np.ndarray:
    """An RGB test card: every pixel distinct enough to see where it went."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 7 % 256],
                    axis=-1).astype(np.uint8)


def save(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png16(pixels: np.ndarray, **writer_options) -> bytes:
    """A 16-bit PNG of (H, W, C) uint16 pixels: C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA."""
    height, width, channels = pixels.shape
    writer = png.Writer(width, height, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16,
                        **writer_options)
    buffer = io.BytesIO()
    writer.write(buffer, pixels.reshape(height, -1))
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk_after_header(data: bytes, chunk: bytes) -> bytes:
    return data[:33] + chunk + data[33:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB and holds no pixel data at all."""
    return (containers.PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IEND", b""))


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """An 8-bit RGB TIFF of ``width`` x ``height`` black pixels in one ``tile`` x ``tile`` tile of deflated zeros
    (Pillow writes no tiled TIFF)."""
    pixels = zlib.compress(bytes(tile * tile * 3), 9)
    shorts = {256: width, 257: height, 259: 8, 262: 2, 277: 3, 284: 1, 322: tile, 323: tile}  # 8: deflate, 2: RGB
    entries = len(shorts) + 3
    bits_at = 8 + 2 + 12 * entries + 4  # after the directory: BitsPerSample's three values, then the tile
    directory = {**{tag: struct.pack("<HHIHH", tag, 3, 1, value, 0) for tag, value in shorts.items()},
                 258: struct.pack("<HHII", 258, 3, 3, bits_at),
                 324: struct.pack("<HHII", 324, 4, 1, bits_at + 6),
                 325: struct.pack("<HHII", 325, 4, 1, len(pixels))}
    return (b"II*\x00" + struct.pack("<IH", 8, entries) + b"".join(directory[tag] for tag in sorted(directory))
            + struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + pixels)


def striped_tiff(side: int, strips: int) -> bytes:
    """An uncompressed 8-bit grey TIFF of ``side`` x ``side`` black pixels, one row a strip, whose strip offsets
    and byte counts list ``strips`` strips (all of them the same ``side`` zeros)."""
    shorts = {256: side, 257: side, 258: 8, 259: 1, 262: 1, 277: 1, 278: 1}  # 1: no compression, black is zero
    entries = len(shorts) + 2
    offsets_at = 8 + 2 + 12 * entries + 4
    pixels_at = offsets_at + 8 * strips
    directory = {**{tag: struct.pack("<HHIHH", tag, 3, 1, value, 0) for tag, value in shorts.items()},
                 273: struct.pack("<HHII", 273, 4, strips, offsets_at),
                 279: struct.pack("<HHII", 279, 4, strips, offsets_at + 4 * strips)}
    return (b"II*\x00" + struct.pack("<IH", 8, entries) + b"".join(directory[tag] for tag in sorted(directory))
            + struct.pack("<I", 0) + struct.pack(f"<{strips}I", *[pixels_at] * strips)
            + struct.pack(f"<{strips}I", *[side] * strips) + bytes(side))


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def grey_profile() -> bytes:
    """A real GRAY-space profile: Pillow cannot create one, so patch the colour space of a valid one."""
    profile = bytearray(srgb_profile())
    profile[16:20] = b"GRAY"
    return bytes(profile)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


# --- Modes --------------------------------------------------------------------------------------


def rgba_image() -> Image.Image:
    alpha = np.zeros((16, 16), np.uint8)
    alpha[:, 8:] = 255
    return Image.fromarray(np.dstack([pattern(), alpha]))


def palette_with_transparency() -> Image.Image:
    image = Image.fromarray(pattern()).quantize(16)
    image.info["transparency"] = 0
    return image


MODES = {
    # name: (encoded bytes, colour channels, has alpha)
    "RGB png": (lambda: save(Image.fromarray(pattern())), 3, False),
    "RGBA png": (lambda: save(rgba_image()), 3, True),
    "LA png": (lambda: save(rgba_image().convert("LA")), 1, True),
    "L png": (lambda: save(Image.fromarray(pattern()).convert("L")), 1, False),
    "L png with tRNS": (lambda: save(Image.fromarray(pattern()).convert("L"), transparency=0), 1, True),
    "RGB png with tRNS": (lambda: save(Image.fromarray(pattern()), transparency=(0, 0, 0)), 3, True),
    "P png": (lambda: save(Image.fromarray(pattern()).quantize(16)), 3, False),
    "P png, grey palette": (lambda: save(Image.fromarray(pattern()).convert("L").convert("P")), 1, False),
    "P png with transparency": (lambda: save(palette_with_transparency()), 3, True),
    "1-bit png": (lambda: save(Image.fromarray(pattern()).convert("1")), 1, False),
    "CMYK jpeg": (lambda: save(Image.fromarray(pattern()).convert("CMYK"), "JPEG", quality=95), 3, False),
    "RGB jpeg": (lambda: save(Image.fromarray(pattern()), "JPEG"), 3, False),
    "L jpeg": (lambda: save(Image.fromarray(pattern()).convert("L"), "JPEG"), 1, False),
    "RGB webp lossless": (lambda: save(Image.fromarray(pattern()), "WEBP", lossless=True), 3, False),
    "RGBA webp lossless": (lambda: save(rgba_image(), "WEBP", lossless=True), 3, True),
    "RGB tiff": (lambda: save(Image.fromarray(pattern()), "TIFF"), 3, False),
    "RGBA tiff": (lambda: save(rgba_image(), "TIFF", compression="tiff_deflate"), 3, True),
    "RGB bmp": (lambda: save(Image.fromarray(pattern()), "BMP"), 3, False),
    "P gif": (lambda: save(Image.fromarray(pattern()).quantize(64), "GIF"), 3, False),
    "P gif with transparency": (lambda: save(palette_with_transparency(), "GIF"), 3, True),
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_decodes_to_grey_or_rgb_with_alpha_where_the_file_has_it(name):
    build, channels, has_alpha = MODES[name]
    data = build()
    decoded = images.decode(data, LIMIT)
    assert decoded.colour.shape == (16, 16, channels) and decoded.colour.dtype == np.uint8
    assert (decoded.alpha is not None) == has_alpha
    reference = Image.open(io.BytesIO(data)).convert("RGBA")
    expected = np.asarray(reference)
    assert np.array_equal(decoded.colour, expected[..., :channels])
    if has_alpha:
        assert np.array_equal(decoded.alpha, expected[..., 3])


def test_cmyk_jpeg_comes_out_as_rgb_of_the_right_colours():
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    decoded = images.decode(save(cyan, "JPEG", quality=95), LIMIT)
    red, green, blue = decoded.colour[8, 8].astype(int)
    assert red < 10 and green > 245 and blue > 245


@pytest.mark.parametrize("image_format", ["JPEG", "TIFF"])
def test_cmyk_with_its_profile_comes_out_in_the_inks_colours(image_format):
    inks = Image.new("CMYK", (32, 16), (255, 0, 0, 0))
    inks.paste((0, 0, 0, 255), (16, 0, 32, 16))
    decoded = images.decode(save(inks, image_format, quality=95, icc_profile=cmyk_profile()), LIMIT)
    for column, corner in ((8, (1, 0, 0, 0)), (24, (0, 0, 0, 1))):
        assert np.abs(decoded.colour[8, column].astype(int) - ink_srgb(corner)).max() <= 3, decoded.colour[8, column]
    assert decoded.icc_profile is None  # sRGB now: the CMYK profile would mislead a viewer


def test_cmyk_with_an_unreadable_profile_is_converted_as_without_one():
    broken = bytearray(cmyk_profile())
    broken[128:132] = struct.pack(">I", 10**6)  # more tags than the profile holds
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    decoded = images.decode(save(cyan, "JPEG", quality=95, icc_profile=bytes(broken)), LIMIT)
    red, green, blue = decoded.colour[8, 8].astype(int)
    assert red < 10 and green > 245 and blue > 245


def test_rgba_alpha_is_exact():
    decoded = images.decode(save(rgba_image()), LIMIT)
    assert (decoded.alpha[:, :8] == 0).all() and (decoded.alpha[:, 8:] == 255).all()


def red_then_blue(image_format: str, **options) -> bytes:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    return save(red, image_format, save_all=True, append_images=[blue], **options)


@pytest.mark.parametrize("image_format, options", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_an_animation_is_refused_rather_than_cut_to_its_first_frame(image_format, options):
    with pytest.raises(InvalidImage, match=f"the {image_format} image is an animation.*send one frame"):
        images.read_header(red_then_blue(image_format, duration=100, **options), LIMIT)


def test_a_tiff_of_several_pages_is_refused_rather_than_cut_to_its_first():
    with pytest.raises(InvalidImage, match="the TIFF image has more than one page.*send one page"):
        images.read_header(red_then_blue("TIFF"), LIMIT)


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_a_tiff_of_several_pages_is_refused_in_either_layout(big):
    with pytest.raises(InvalidImage, match="the TIFF image has more than one page.*send one page"):
        images.read_header(red_then_blue("TIFF", big_tiff=big), LIMIT)


def test_a_tiff_whose_next_directory_is_itself_is_one_page():
    """A first directory whose next offset points back at it is one page, as Pillow's seek ends such a loop."""
    data = bytearray(save(Image.fromarray(pattern()), "TIFF"))
    first = struct.unpack_from("<I", data, 4)[0]
    (count,) = struct.unpack_from("<H", data, first)
    struct.pack_into("<I", data, first + 2 + count * 12, first)
    assert images.decode(bytes(data), LIMIT).colour.shape == (16, 16, 3)


def test_a_tiff_whose_second_directory_is_a_reduced_copy_gives_its_first_page():
    # Pillow writes the tag into every directory it saves; the second one's is what says it is no page
    decoded = images.decode(red_then_blue("TIFF", tiffinfo={images.TIFF_NEW_SUBFILE_TYPE: 1}), LIMIT)
    assert tuple(decoded.colour[4, 4]) == (255, 0, 0)


@pytest.mark.parametrize("image_format, options", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_an_animation_of_one_frame_is_a_still_image(image_format, options):
    data = save(Image.new("RGB", (8, 8), (255, 0, 0)), image_format, save_all=True, append_images=[], **options)
    assert tuple(images.decode(data, LIMIT).colour[4, 4]) == (255, 0, 0)


def test_the_first_picture_of_an_mpo_is_the_image():
    """A phone's JPEG may carry a preview or a depth map as a second picture (MPO): it is no frame of the image."""
    data = red_then_blue("MPO")
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert (np.abs(images.decode(data, LIMIT).colour[4, 4].astype(int) - (255, 0, 0)) < 8).all()


# --- 16 bits ------------------------------------------------------------------------------------


def levels16(channels: int, height: int = 16, width: int = 16) -> np.ndarray:
    """Levels whose low bytes vary: an 8-bit path would lose or wrap them."""
    rng = np.random.default_rng(channels)
    return rng.integers(0, 65536, (height, width, channels), dtype=np.uint16)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "RGB", "RGBA"])
def test_16_bit_png_keeps_every_level(channels):
    pixels = levels16(channels)
    decoded = images.decode(png16(pixels), LIMIT)
    colour_channels = 1 if channels < 3 else 3
    assert decoded.colour.dtype == np.uint16
    assert np.array_equal(decoded.colour, pixels[..., :colour_channels])
    if channels in (2, 4):
        assert np.array_equal(decoded.alpha, pixels[..., -1])
    else:
        assert decoded.alpha is None


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "RGB", "RGBA"])
def test_16_bit_png_round_trips_exactly(channels):
    pixels = levels16(channels)
    colour_channels = 1 if channels < 3 else 3
    alpha = pixels[..., -1] if channels in (2, 4) else None
    encoded = encoding.encode(pixels[..., :colour_channels], alpha, None, "png", 90, 6, 2)
    width, height, rows, info = png.Reader(bytes=encoded).read()
    assert info["bitdepth"] == 16 and info["planes"] == channels
    assert np.array_equal(np.vstack([np.frombuffer(row, np.uint16) for row in rows]).reshape(pixels.shape), pixels)


def test_interlaced_16_bit_png_keeps_every_level():
    pixels = levels16(3, 11, 13)
    assert np.array_equal(images.decode(png16(pixels, interlace=True), LIMIT).colour, pixels)


def test_16_bit_png_transparent_colour_becomes_alpha():
    pixels = levels16(3)
    key = tuple(int(v) for v in pixels[0, 0])
    decoded = images.decode(png16(pixels, transparent=key), LIMIT)
    assert decoded.alpha is not None and decoded.alpha.dtype == np.uint16
    assert decoded.alpha[0, 0] == 0 and (decoded.alpha == 65535).sum() == 16 * 16 - 1


def test_16_bit_grey_tiff_stays_16_bit():
    pixels = levels16(1)[..., 0]
    decoded = images.decode(save(Image.fromarray(pixels), "TIFF"), LIMIT)
    assert decoded.colour.dtype == np.uint16 and np.array_equal(decoded.colour[..., 0], pixels)


@pytest.mark.parametrize(("bit_depth", "key"), [(2, 1), (4, 5), (4, 15)])
def test_a_2_or_4_bit_grey_png_keeps_its_transparent_level(bit_depth, key):
    """Pillow scales the levels to 8 bits (1 to 85 at 2 bits) but not the tRNS level, which matched no pixel."""
    stored = [0, key, 2, 3]
    buffer = io.BytesIO()
    png.Writer(4, 1, greyscale=True, bitdepth=bit_depth, transparent=key).write(buffer, [stored])
    decoded = images.decode(buffer.getvalue(), LIMIT)
    scale = 255 // (2**bit_depth - 1)
    assert decoded.colour[..., 0].tolist() == [[level * scale for level in stored]]
    assert decoded.alpha.tolist() == [[255, 0, 255, 255]]


def bmp_v4(bits: int, masks: tuple[int, int, int, int], pixels: bytes, width: int = 2) -> bytes:
    """A bottom-up BMP of one row with a BITMAPV4HEADER, its pixels described by bit masks (BI_BITFIELDS)."""
    header = struct.pack("<IiiHHIIiiII4I4s48x", 108, width, 1, 1, bits, 3, len(pixels), 2835, 2835, 0, 0, *masks,
                         b"BGRs")
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def test_a_16_bit_bmp_with_an_alpha_mask_is_refused_rather_than_answered_opaque():
    """Pillow reads its colour and ignores the alpha bit: the transparent second pixel came back opaque."""
    pixels = struct.pack("<HH", 0x8000 | 31 << 10, 31)  # opaque red, transparent blue
    with pytest.raises(InvalidImage, match=r"16-bit pixels have an alpha mask \(0x8000\).*save the image as PNG"):
        images.read_header(bmp_v4(16, (0x7C00, 0x3E0, 0x1F, 0x8000), pixels), LIMIT)
    decoded = images.decode(bmp_v4(16, (0x7C00, 0x3E0, 0x1F, 0), pixels), LIMIT)
    assert decoded.colour.tolist() == [[[255, 0, 0], [0, 0, 255]]] and decoded.alpha is None


def test_a_32_bit_bmp_with_an_alpha_mask_keeps_its_alpha():
    pixels = bytes([10, 20, 30, 40, 50, 60, 70, 0])  # B, G, R, A
    decoded = images.decode(bmp_v4(32, (0xFF0000, 0xFF00, 0xFF, 0xFF000000), pixels), LIMIT)
    assert decoded.colour.tolist() == [[[30, 20, 10], [70, 60, 50]]] and decoded.alpha.tolist() == [[40, 0]]


def test_a_12_bit_jpeg_is_refused_naming_its_precision():
    data = bytearray(save(Image.fromarray(pattern()), "JPEG", exif=exif_orientation(1)))
    frame = data.index(b"\xff\xc0")
    data[frame + 4] = 12  # the frame's sample precision
    with pytest.raises(InvalidImage, match="the JPEG image has 12-bit samples.*16-bit PNG"):
        images.read_header(bytes(data), LIMIT)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_16_bit_levels_round_to_8_bit_for_lossy_formats(output_format):
    # Flat images survive lossy coding exactly, so the rounding itself is visible.
    for level16, level8 in [(65535, 255), (257 * 100, 100), (257 * 100 + 128, 100), (257 * 100 + 129, 101), (0, 0)]:
        colour = np.full((16, 16, 3), level16, np.uint16)
        result = np.asarray(Image.open(io.BytesIO(encoding.encode(colour, None, None, output_format, 100, 6, 2))))
        assert abs(int(result[8, 8, 0]) - level8) <= 1 if output_format == "webp" else result[8, 8, 0] == level8


# --- EXIF orientation and ICC profiles ----------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow_does(orientation):
    source = Image.fromarray(pattern(6, 10))
    data = save(source, exif=exif_orientation(orientation))
    decoded = images.decode(data, LIMIT)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decoded.colour, expected)


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
@pytest.mark.parametrize("compression", ["raw", "tiff_deflate"])
def test_exif_orientation_of_a_tiff_is_applied_once(orientation, compression):
    pixels = pattern(6, 10)
    data = save(Image.fromarray(pixels), "TIFF", exif=exif_orientation(orientation), compression=compression)
    stored = Image.fromarray(pixels)
    stored.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(stored))
    header = images.read_header(data, LIMIT)
    assert (header.width, header.height) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(images.decode_pixels(data, header).colour, expected)


def test_exif_orientation_of_a_16_bit_png_is_applied():
    pixels = levels16(4, 6, 10)
    data = with_chunk_after_header(png16(pixels), png_chunk(b"eXIf", exif_orientation(6)))
    decoded = images.decode(data, LIMIT)
    assert np.array_equal(decoded.colour, np.rot90(pixels[..., :3], -1))
    assert np.array_equal(decoded.alpha, np.rot90(pixels[..., 3], -1))


def test_exif_orientation_of_a_png_is_read_from_an_exif_chunk_after_its_pixel_data():
    pixels = pattern(6, 10)
    plain = save(Image.fromarray(pixels))
    iend = len(plain) - 12
    data = plain[:iend] + png_chunk(b"eXIf", exif_orientation(6)) + plain[iend:]
    header = images.read_header(data, LIMIT)
    assert (header.width, header.height) == (6, 10)
    assert np.array_equal(images.decode_pixels(data, header).colour, np.rot90(pixels, -1))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"])
def test_the_header_is_read_without_decoding_any_pixel(image_format, monkeypatch):
    """The header decides the request's limits before it queues: decoding there would spend the memory and
    time those limits guard. Pillow decodes pixels only through a decoder, so none may be made."""
    data = save(Image.fromarray(pattern()), image_format)
    decoders = []
    make_decoder = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *args: decoders.append(args[1]) or make_decoder(*args))
    header = images.read_header(data, LIMIT)
    assert (header.width, header.height) == (16, 16) and decoders == []
    images.decode_pixels(data, header)
    assert decoders


def test_exif_orientation_of_a_jpeg_swaps_its_sides():
    data = save(Image.fromarray(pattern(8, 16)), "JPEG", exif=exif_orientation(6))
    assert images.decode(data, LIMIT).colour.shape == (16, 8, 3)


def test_corrupt_exif_is_ignored_like_viewers_do():
    data = save(Image.fromarray(pattern()), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert images.decode(data, LIMIT).colour.shape == (16, 16, 3)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_icc_profile_is_read(image_format):
    profile = srgb_profile()
    decoded = images.decode(save(Image.fromarray(pattern()), image_format, icc_profile=profile), LIMIT)
    assert decoded.icc_profile == profile


def test_icc_profile_of_a_16_bit_png_is_read():
    profile = srgb_profile()
    chunk = png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(profile))
    assert images.decode(with_chunk_after_header(png16(levels16(3)), chunk), LIMIT).icc_profile == profile


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_icc_profile_is_written(output_format, dtype):
    profile = srgb_profile()
    encoded = encoding.encode(np.zeros((8, 8, 3), dtype), None, profile, output_format, 90, 6, 2)
    assert Image.open(io.BytesIO(encoded)).info.get("icc_profile") == profile


@pytest.mark.parametrize("output_format, mode", [("png", "L"), ("jpeg", "L"), ("webp", "RGB")])
def test_grey_output_carries_its_grey_profile_only_where_the_format_holds_grey(output_format, mode):
    encoded = encoding.encode(np.zeros((8, 8, 1), np.uint8), None, grey_profile(), output_format, 90, 6, 2)
    written = Image.open(io.BytesIO(encoded))
    assert written.mode == mode
    assert written.info.get("icc_profile") == (grey_profile() if mode == "L" else None)


def test_grey_profile_is_kept_for_grey_and_a_mismatched_profile_is_dropped():
    grey = Image.fromarray(pattern()).convert("L")
    assert images.decode(save(grey, icc_profile=grey_profile()), LIMIT).icc_profile == grey_profile()
    assert images.decode(save(grey, icc_profile=srgb_profile()), LIMIT).icc_profile is None


def test_a_png_profile_longer_than_the_png_reader_takes_is_refused_naming_the_limit():
    """Not as corrupt data, which is how Pillow's reader words it; one just within the limit is read."""
    limit = 1 << 20
    padded = srgb_profile() + bytes(limit + 1 - len(srgb_profile()))
    with pytest.raises(InvalidImage, match=f"ICC profile \\(iCCP\\) is longer than {limit} bytes.*shorter one"):
        images.read_header(save(Image.fromarray(pattern()), icc_profile=padded), LIMIT)
    fits = padded[:limit]
    assert images.decode(save(Image.fromarray(pattern()), icc_profile=fits), LIMIT).icc_profile == fits


def test_grey_palette_with_an_rgb_profile_stays_rgb_so_the_profile_still_applies():
    image = Image.fromarray(pattern()).convert("L").convert("P")
    decoded = images.decode(save(image, icc_profile=srgb_profile()), LIMIT)
    assert decoded.colour.shape[-1] == 3 and decoded.icc_profile == srgb_profile()


# --- PNG colour chunks in jpeg and webp ----------------------------------------------------------

SRGB_PRIMARIES = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
ADOBE_RGB_PRIMARIES = struct.pack(">8I", 31270, 32900, 64000, 33000, 21000, 71000, 15000, 6000)
GAMMA = {"linear": png_chunk(b"gAMA", struct.pack(">I", 100000)), "1/2.2": png_chunk(b"gAMA", struct.pack(">I", 45455)),
         "1/1.8": png_chunk(b"gAMA", struct.pack(">I", 55556)), "1/2.25": png_chunk(b"gAMA", struct.pack(">I", 44444))}
SRGB_CHUNK = png_chunk(b"sRGB", b"\x00")


@pytest.mark.parametrize("chunks, named", [
    pytest.param((GAMMA["linear"],), "gAMA", id="linear"),
    pytest.param((GAMMA["1/1.8"],), "gAMA", id="an old Mac's gamma"),
    pytest.param((GAMMA["1/2.2"], png_chunk(b"cHRM", ADOBE_RGB_PRIMARIES)), "cHRM", id="Adobe RGB primaries"),
    pytest.param((GAMMA["linear"], png_chunk(b"cHRM", ADOBE_RGB_PRIMARIES)), "gAMA and cHRM", id="both"),
    pytest.param((png_chunk(b"cICP", bytes([9, 16, 0, 1])), SRGB_CHUNK), "cICP", id="HDR (BT.2100 PQ)"),
])
@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_a_png_whose_colour_chunks_are_not_srgb_is_refused_for_jpeg_and_webp(chunks, named, output_format):
    verb, them = ("say", "them") if " and " in named else ("says", "it")
    with pytest.raises(InvalidInput, match=f"the PNG's {named} {verb} its levels are not sRGB, and {output_format} "
                                           f"has no place for {them}; ask for format png"):
        encoding.check_colour_fits(output_format, chunks, 0)
    encoding.check_colour_fits("png", chunks, 0)


@pytest.mark.parametrize("chunks, profile_bytes", [
    pytest.param((GAMMA["1/2.2"], png_chunk(b"cHRM", SRGB_PRIMARIES)), 0, id="sRGB's gamma and primaries"),
    pytest.param((GAMMA["1/2.25"],), 0, id="a gamma within 5 % of sRGB's"),
    pytest.param((GAMMA["linear"], SRGB_CHUNK), 0, id="an sRGB chunk, which ranks above gAMA"),
    pytest.param((GAMMA["linear"],), 3144, id="an ICC profile, carried and ranking above gAMA"),
    pytest.param((png_chunk(b"cICP", bytes([1, 13, 0, 1])), GAMMA["linear"]), 0, id="cICP of sRGB"),
])
def test_a_png_whose_colour_chunks_say_srgb_goes_to_jpeg(chunks, profile_bytes):
    encoding.check_colour_fits("jpeg", chunks, profile_bytes)


def test_only_the_first_well_formed_colour_chunk_of_each_kind_is_carried():
    """Viewers ignore a colour chunk of another length than its own and a second copy, so neither is copied out of
    the upload nor written into the answer: a gAMA padded to a megabyte is neither held nor sent back."""
    padded = png_chunk(b"gAMA", bytes(1 << 20))
    primaries = png_chunk(b"cHRM", ADOBE_RGB_PRIMARIES)
    data = save(Image.fromarray(pattern()))
    for chunk in (GAMMA["1/2.2"], primaries, GAMMA["linear"], padded):  # each goes right after IHDR: reversed order
        data = with_chunk_after_header(data, chunk)
    assert images.read_header(data, LIMIT).png.colour_chunks == (GAMMA["linear"], primaries)


# --- Resolution (DPI) ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF", "BMP"])
def test_the_resolution_is_read_across_and_down(image_format):
    dpi = images.decode(save(Image.fromarray(pattern()), image_format, dpi=(300, 150)), LIMIT).dpi
    assert dpi == pytest.approx((300, 150), abs=0.02)


@pytest.mark.parametrize("image_format", ["JPEG", "TIFF"])
def test_the_resolution_turns_with_the_exif_orientation(image_format):
    data = save(Image.fromarray(pattern(6, 10)), image_format, dpi=(300, 150), exif=exif_orientation(6))
    assert images.decode(data, LIMIT).dpi == (150, 300)


@pytest.mark.parametrize("data", [
    pytest.param(lambda: save(Image.fromarray(pattern())), id="png without pHYs"),
    pytest.param(lambda: save(Image.fromarray(pattern()), "TIFF"), id="tiff without resolution tags"),
    pytest.param(lambda: save(Image.fromarray(pattern()), "TIFF", resolution=100, resolution_unit=1),
                 id="tiff of no unit"),
    pytest.param(lambda: save(Image.fromarray(pattern()), "WEBP"), id="webp"),
])
def test_an_image_without_a_resolution_in_inches_has_none(data):
    """Pillow gives a TIFF without resolution tags 1 dpi: no resolution is not one dot per inch."""
    assert images.decode(data(), LIMIT).dpi is None


@pytest.mark.parametrize("output_format, dpi", [("png", (300.4, 150)), ("jpeg", (300, 150)), ("webp", None)])
def test_the_resolution_is_written_where_the_format_holds_one(output_format, dpi):
    """PNG keeps fractions of a dot per inch (in dots per metre); JPEG keeps whole ones."""
    encoded = encoding.encode(pattern(), None, None, output_format, 90, 6, 2, dpi=(300.4, 150))
    assert Image.open(io.BytesIO(encoded)).info.get("dpi") == (None if dpi is None else pytest.approx(dpi, abs=0.02))


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_a_resolution_past_what_the_format_holds_is_left_out(output_format):
    encoded = encoding.encode(pattern(), None, None, output_format, 90, 6, 2, dpi=(1e12, 1e12))
    assert "dpi" not in Image.open(io.BytesIO(encoded)).info


# --- Limits -------------------------------------------------------------------------------------


def test_pixel_limit_names_the_size_and_the_limit():
    with pytest.raises(TooLarge, match=r"65x64 = 4160 pixels; the limit is 4096 input pixels \(MAX_INPUT_PIXELS\)"):
        images.decode(save(Image.new("RGB", (65, 64))), LIMIT)
    assert images.decode(save(Image.new("RGB", (64, 64))), LIMIT).width == 64


def test_png_declaring_20000_by_20000_is_rejected_before_any_pixel_is_allocated():
    data = png_header_only(20000, 20000)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="20000x20000 = 400000000 pixels"):
            images.decode(data, 2000 * 2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_16_bit_png_whose_pixel_data_inflates_far_past_its_size_is_refused_in_bounded_memory():
    bomb = zlib.compress(bytes(200_000_000), 9)  # 200 MB of zeros in about 200 kB
    data = (containers.PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", bomb) + png_chunk(b"IEND", b""))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidImage, match="zlib bomb"):
            images.decode(data, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_a_tiff_whose_tiles_exceed_the_pixel_limit_is_413_however_small_the_image():
    # Each tile is allocated and inflated whole: at the default limit a 1x1 image in a 16384x16384 tile, 800 kB
    # uploaded, took 800 MB and 3 s to decode. Here the limit is 64x64.
    with pytest.raises(TooLarge, match=r"tiles are 128x128 = 16384 pixels each, and each is decoded whole; the "
                                       r"limit is 4096 input pixels \(MAX_INPUT_PIXELS\)"):
        images.decode(tiled_tiff(1, 1, 128), LIMIT)
    decoded = images.decode(tiled_tiff(48, 40, 64), LIMIT)  # tiles larger than the image, as encoders write
    assert decoded.colour.shape == (40, 48, 3) and not decoded.colour.any()


@pytest.mark.parametrize("side", [70, 20000])
def test_jpeg_declaring_too_many_pixels_is_413(side):
    data = bytearray(save(Image.fromarray(pattern()), "JPEG"))
    start = data.find(b"\xff\xc0")
    data[start + 5:start + 9] = struct.pack(">HH", side, side)
    with pytest.raises(TooLarge, match=f"{side * side} pixels; the limit is 4096 input pixels"):
        images.decode(bytes(data), LIMIT)


def test_decoding_leaves_pillows_process_wide_bomb_guard_alone():
    before = Image.MAX_IMAGE_PIXELS
    images.decode(save(Image.new("RGB", (8, 8))), 64)
    assert Image.MAX_IMAGE_PIXELS == before


def test_the_service_sets_pillows_bomb_guard_from_the_input_limit(service):
    assert Image.MAX_IMAGE_PIXELS == service.settings.max_input_pixels


def test_pillows_bomb_guard_answers_413_with_the_limit(monkeypatch):
    # A GIF declaring 40000x40000: Pillow's guard (at twice its limit) stops it inside Image.open.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    gif = bytearray(save(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = (40000).to_bytes(2, "little") * 2
    with pytest.raises(TooLarge, match="the image has 1600000000 pixels; the limit is 4000000 input pixels"):
        images.decode(bytes(gif), 4_000_000)


# --- Bad input ----------------------------------------------------------------------------------


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "hello")
    return buffer.getvalue()


def gif_javascript_polyglot() -> bytes:
    """GIF89a/*...*/=1;alert(1); : the screen width bytes open a comment that closes after the trailer."""
    data = bytearray(save(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = b"/*" + struct.pack("<H", 10)
    return bytes(data) + b"*/=1;alert(1);"


def zero_size_gif() -> bytes:
    data = bytearray(save(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = bytes(4)
    return bytes(data)


def valid_png() -> bytes:
    return save(Image.fromarray(pattern()))


def with_bad_ihdr_checksum() -> bytes:
    data = bytearray(valid_png())
    data[29] ^= 0xFF
    return bytes(data)


BAD_INPUTS = {
    "empty": (lambda: b"", "empty"),
    "text": (lambda: b"this is plain text, not a picture", "not an image in an accepted format"),
    "html": (lambda: b"<html><script>alert(1)</script></html>", "not an image in an accepted format"),
    "zip": (zip_file, "not an image in an accepted format"),
    "truncated png": (lambda: valid_png()[:60], "PNG image is truncated"),
    "png without IEND": (lambda: valid_png()[:-12], "PNG image is truncated"),
    "truncated jpeg": (lambda: save(Image.fromarray(pattern()), "JPEG")[:300], "JPEG image is corrupt or truncated"),
    "jpeg signature only": (lambda: b"\xff\xd8\xff", "JPEG"),
    "png signature only": (lambda: containers.PNG_SIGNATURE, "PNG image is truncated"),
    "zero-size gif": (zero_size_gif, "no pixels: its logical screen is 0x0"),
    "png with zip appended": (lambda: valid_png() + zip_file(), "bytes after its IEND chunk"),
    "gif/javascript polyglot": (gif_javascript_polyglot, "bytes after its trailer"),
    "webp with data appended": (lambda: save(Image.fromarray(pattern()), "WEBP") + b"<?php", "after its RIFF chunk"),
    "png with unknown critical chunk": (lambda: with_chunk_after_header(valid_png(), png_chunk(b"ZZZZ", b"x")),
                                        "unknown critical chunk 'ZZZZ'"),
    "png with a non-letter chunk type": (lambda: with_chunk_after_header(valid_png(), png_chunk(b"a1!#", b"")),
                                         "is not a chunk type"),
    "png with bad IHDR checksum": (with_bad_ihdr_checksum, "checksum of its IHDR chunk is wrong"),
    "png with a chunk longer than the file": (
        lambda: valid_png()[:33] + struct.pack(">I", 2**31) + b"tEXt" + valid_png()[33:], "runs past the end"),
    "png declaring 0x0": (lambda: png_header_only(0, 0), "no pixels (0x0)"),
    "png header without pixel data": (lambda: png_header_only(8, 8), "PNG image is corrupt or truncated"),
    "bmp header only": (lambda: b"BM" + bytes(60), "BMP"),
    "tiff header only": (lambda: b"II*\x00" + bytes(60), "TIFF"),
    "webp header only": (lambda: b"RIFF\x04\x00\x00\x00WEBP", "WEBP"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_invalid_image_saying_what_is_wrong(name):
    build, message = BAD_INPUTS[name]
    with pytest.raises(InvalidImage, match=message.replace("(", r"\(").replace(")", r"\)")):
        images.decode(build(), LIMIT)


def test_float_tiff_is_refused_with_a_reason_from_its_header():
    """Before the request queues and its memory is reserved: the mode is in the header."""
    data = save(Image.fromarray(np.zeros((8, 8), np.float32)), "TIFF")
    with pytest.raises(InvalidImage, match="floating-point"):
        images.read_header(data, LIMIT)


def test_32_bit_grey_tiff_within_16_bits_keeps_every_level():
    pixels = np.array([[0, 1, 40000, 65535]], np.int32)
    decoded = images.decode(save(Image.fromarray(pixels), "TIFF"), LIMIT)
    assert decoded.colour.dtype == np.uint16 and np.array_equal(decoded.colour[..., 0], pixels)


@pytest.mark.parametrize("levels, named", [((-5, 100), "from -5 to 100"), ((0, 70000), "from 0 to 70000")])
def test_32_bit_grey_tiff_with_levels_past_16_bits_is_refused_not_clipped(levels, named):
    data = save(Image.fromarray(np.array([levels], np.int32)), "TIFF")
    with pytest.raises(InvalidImage, match=f"integer grey image has levels {named}.*0 to 65535"):
        images.decode(data, LIMIT)


# --- Output -------------------------------------------------------------------------------------


def decoded_rgba(alpha_value: int) -> images.DecodedImage:
    return images.DecodedImage(pattern(), np.full((16, 16), alpha_value, np.uint8), None)


def test_jpeg_output_drops_a_fully_opaque_alpha_channel():
    assert encoding.alpha_for("jpeg", decoded_rgba(255).alpha) is None


def test_jpeg_output_of_a_transparent_image_is_refused_naming_the_way_out():
    with pytest.raises(InvalidInput, match="jpeg cannot hold transparency.*png or webp"):
        encoding.alpha_for("jpeg", decoded_rgba(128).alpha)


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_alpha_is_kept_for_png_and_webp(output_format):
    assert encoding.alpha_for(output_format, decoded_rgba(128).alpha) is not None


def test_webp_side_limit_is_checked_before_upscaling():
    with pytest.raises(InvalidInput, match="webp holds at most 16383 pixels a side.*20000x400"):
        encoding.check_output_size("webp", (20000, 400))
    encoding.check_output_size("png", (20000, 400))


def longest_jpeg_profile_and_one_byte() -> bytes:
    """An RGB profile one byte longer than a JPEG holds (a real one's header, padded)."""
    profile = srgb_profile()
    return profile + bytes(MAX_JPEG_ICC_PROFILE_BYTES + 1 - len(profile))


@pytest.mark.parametrize("space, counted", [("RGB", True), ("GRAY", True), ("CMYK", False)])
def test_the_header_gives_the_length_and_space_of_a_profile_the_result_may_carry(space, counted):
    """A CMYK profile is used to convert the pixels and left out of the result, so no output format has to hold it."""
    profile = bytearray(srgb_profile())
    profile[16:20] = space.ljust(4).encode()
    header = images.read_header(save(Image.fromarray(pattern()), "TIFF", icc_profile=bytes(profile)), LIMIT)
    assert header.profile_bytes == (len(profile) if counted else 0)
    assert header.profile_space == (space.ljust(4).encode() if counted else None)


def test_a_profile_longer_than_jpeg_holds_is_refused_for_jpeg_only():
    too_long = len(longest_jpeg_profile_and_one_byte())
    with pytest.raises(InvalidInput, match=f"jpeg holds an ICC profile of at most {MAX_JPEG_ICC_PROFILE_BYTES} "
                                           f"bytes and the image's is {too_long} bytes; ask for format png or webp"):
        encoding.check_profile_fits("jpeg", too_long, b"RGB ")
    encoding.check_profile_fits("jpeg", MAX_JPEG_ICC_PROFILE_BYTES, b"RGB ")
    for output_format in ("png", "webp"):
        encoding.check_profile_fits(output_format, too_long, b"RGB ")


def test_a_grey_profile_is_refused_for_webp_which_writes_grey_as_rgb():
    """Photoshop gives grey images a dot gain profile: read as sRGB instead, their middle tones would shift."""
    with pytest.raises(InvalidInput, match="webp holds no grey, and the image's grey ICC profile cannot go with the "
                                           "RGB it would be written as; ask for format png or jpeg"):
        encoding.check_profile_fits("webp", len(grey_profile()), b"GRAY")
    for output_format in ("png", "jpeg"):
        encoding.check_profile_fits(output_format, len(grey_profile()), b"GRAY")


@pytest.mark.parametrize("output_format, mode", [("png", "RGBA"), ("webp", "RGBA"), ("jpeg", "RGB")])
def test_encode_writes_the_asked_format(output_format, mode):
    alpha = None if output_format == "jpeg" else np.full((16, 16), 200, np.uint8)
    encoded = encoding.encode(pattern(), alpha, None, output_format, 90, 6, 2)
    image = Image.open(io.BytesIO(encoded))
    assert image.format == OUTPUT_FORMATS[output_format][0] and image.mode == mode


def test_quality_changes_the_size_of_lossy_output():
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for output_format in ("jpeg", "webp"):
        low, high = (len(encoding.encode(noisy, None, None, output_format, q, 6, 2)) for q in (10, 95))
        assert low < high / 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_resize_gives_the_exact_size_and_keeps_the_dtype(dtype):
    pixels = np.full((8, 12, 3), np.iinfo(dtype).max, dtype)
    resized = resize(pixels, (36, 24))
    assert resized.shape == (24, 36, 3) and resized.dtype == dtype
    assert (resized == np.iinfo(dtype).max).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_transparent_pixels_near_visible_ones_take_their_colour_and_the_rest_keep_theirs(dtype):
    top = np.iinfo(dtype).max
    colour = np.zeros((3, 20, 3), dtype)  # stored black under the transparency, as most editors save it
    colour[:, :2] = (top, top // 2, 0)
    far = (7, 8, 9)
    colour[:, BLEED_REACH + 2:] = far
    alpha = np.zeros((3, 20), dtype)
    alpha[:, :2] = top
    bled = bleed_into_transparency(colour.copy(), alpha)
    assert bled.dtype == dtype
    assert (bled[:, :BLEED_REACH + 2] == (top, top // 2, 0)).all()
    assert (bled[:, BLEED_REACH + 2:] == far).all()


def test_bleeding_leaves_images_without_transparent_pixels_alone():
    colour = pattern()
    assert bleed_into_transparency(colour, None) is colour
    assert bleed_into_transparency(colour, np.full((16, 16), 1, np.uint8)) is colour
    assert np.array_equal(bleed_into_transparency(colour.copy(), np.zeros((16, 16), np.uint8)), colour)


def test_png_compression_level_changes_size_not_pixels():
    pixels = pattern()
    fast, small = (encoding.encode(pixels, None, None, "png", 90, level, 2) for level in (1, 9))
    assert len(small) < len(fast)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(Image.open(io.BytesIO(small))))


# --- Containers of many empty pieces -----------------------------------------------------------------


def png_with(chunk: bytes, copies: int) -> bytes:
    """A 16x16 PNG with ``copies`` of ``chunk`` after its header."""
    return with_chunk_after_header(save(Image.new("RGB", (16, 16))), chunk * copies)


def jpeg_with(padding: bytes) -> bytes:
    """A 16x16 JPEG with ``padding`` after its start marker."""
    data = save(Image.new("RGB", (16, 16)), "JPEG")
    return data[:2] + padding + data[2:]


def gif_with_comment(sub_blocks: int) -> bytes:
    """A 16x16 GIF whose first block is a comment of ``sub_blocks`` one-byte sub-blocks."""
    data = save(Image.new("P", (16, 16)), "GIF")
    header = 13 + containers._colour_table_size(data[10])
    return data[:header] + b"\x21\xfe" + b"\x01x" * sub_blocks + b"\x00" + data[header:]


def webp_with(chunk: bytes, copies: int) -> bytes:
    """A 16x16 WebP (VP8X, with an EXIF chunk) with ``copies`` of ``chunk`` at its end, its RIFF length grown alike."""
    data = save(Image.new("RGB", (16, 16)), "WEBP", lossless=True, exif=exif_orientation(1))
    body = data[12:] + chunk * copies
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def rle_bmp(side: int, runs: bytes) -> bytes:
    """A ``side`` x ``side`` grey BMP whose RLE8 data is ``runs`` (Pillow writes no run-length BMP)."""
    palette = b"".join(bytes([level, level, level, 0]) for level in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + palette + runs


def rows_of_grey(side: int) -> bytes:
    """RLE8 data: each row one run of level 7 and an end of line, then the end of the bitmap."""
    return (bytes([side, 7]) + b"\x00\x00") * side + b"\x00\x01"


EMPTY_CHUNK = png_chunk(b"abCd", b"")
EMPTY_SEGMENT = b"\xff\xe5\x00\x02"  # an APP5 segment holding nothing
EMPTY_WEBP_CHUNK = b"ABCD\x00\x00\x00\x00"


@pytest.mark.parametrize("build, message", [
    (lambda: png_with(EMPTY_CHUNK, containers.MAX_PNG_CHUNKS), f"more than {containers.MAX_PNG_CHUNKS} chunks"),
    (lambda: jpeg_with(EMPTY_SEGMENT * containers.MAX_JPEG_SEGMENTS),
     f"more than {containers.MAX_JPEG_SEGMENTS} segments"),
    (lambda: jpeg_with(b"\xff" * (containers.MAX_JPEG_PADDING_BYTES + 1) + EMPTY_SEGMENT),
     f"more than {containers.MAX_JPEG_PADDING_BYTES} fill or stray bytes"),
    (lambda: jpeg_with(EMPTY_SEGMENT + bytes(containers.MAX_JPEG_PADDING_BYTES + 1)),
     f"more than {containers.MAX_JPEG_PADDING_BYTES} fill or stray bytes"),
    (lambda: gif_with_comment(containers.MAX_GIF_SUB_BLOCKS), f"more than {containers.MAX_GIF_SUB_BLOCKS} sub-blocks"),
    (lambda: webp_with(EMPTY_WEBP_CHUNK, containers.MAX_WEBP_CHUNKS), f"more than {containers.MAX_WEBP_CHUNKS} chunks"),
    # Delta escapes that move no pixel, before the rows.
    (lambda: rle_bmp(16, b"\x00\x02\x00\x00" * 300 + rows_of_grey(16)),
     "run-length data is 1266 bytes, more than the 1058 that 16x16 pixels can take"),
    (lambda: striped_tiff(16, containers.MAX_TIFF_STRIPS + 1),
     f"{containers.MAX_TIFF_STRIPS + 1} strips or tiles, more than {containers.MAX_TIFF_STRIPS}"),
], ids=["png-chunks", "jpeg-segments", "jpeg-fill", "jpeg-stray-bytes", "gif-sub-blocks", "webp-chunks", "bmp-runs",
        "tiff-strips"])
def test_a_container_of_more_empty_pieces_than_encoders_write_is_refused_before_decoding(build, message):
    # Decoders read each piece in Python: 30 MB of them held a worker for 10 to 50 s, up to 1.4 GB for 16x16 pixels.
    with pytest.raises(InvalidImage, match=message):
        images.decode(build(), LIMIT)


@pytest.mark.parametrize("build", [
    lambda: png_with(EMPTY_CHUNK, 100), lambda: jpeg_with(EMPTY_SEGMENT * 100),
    lambda: jpeg_with(b"\xff" * 16 + EMPTY_SEGMENT), lambda: jpeg_with(EMPTY_SEGMENT + bytes(16)),
    lambda: gif_with_comment(1000), lambda: webp_with(EMPTY_WEBP_CHUNK, 100),
    lambda: rle_bmp(16, b"\x00\x02\x00\x00" * 10 + rows_of_grey(16)), lambda: striped_tiff(16, 16),
], ids=["png-chunks", "jpeg-segments", "jpeg-fill", "jpeg-stray-bytes", "gif-sub-blocks", "webp-chunks", "bmp-runs",
        "tiff-strips"])
def test_a_few_empty_pieces_as_files_in_the_wild_have_decode(build):
    assert images.decode(build(), LIMIT).width == 16


def test_a_run_length_bmp_decodes_to_its_runs():
    decoded = images.decode(rle_bmp(16, rows_of_grey(16)), LIMIT)
    assert decoded.colour.shape == (16, 16, 1) and (decoded.colour == 7).all()


# --- Progressive JPEG scan bombs ------------------------------------------------------------------


def test_a_jpeg_with_more_scans_than_encoders_write_is_refused_before_decoding():
    with pytest.raises(InvalidImage, match=f"more than {containers.MAX_JPEG_SCANS} scans"):
        images.decode(scan_bomb(64, 64, containers.MAX_JPEG_SCANS), max_pixels=10**6)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"progressive": True, "optimize": True}])
def test_jpegs_as_encoders_write_them_pass_the_scan_count(options):
    pixels = np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    decoded = images.decode(encode(pixels, "JPEG", **options), max_pixels=10**6)
    assert (decoded.width, decoded.height) == (40, 48)


def test_scan_markers_inside_an_exif_thumbnail_are_not_counted():
    thumbnail = scan_bomb(8, 8, containers.MAX_JPEG_SCANS)  # many scans, but inside an APP1 segment
    main = encode(np.zeros((16, 16, 3), np.uint8), "JPEG", progressive=True)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 8) + b"Exif\x00\x00" + thumbnail
    decoded = images.decode(main[:2] + app1 + main[2:], max_pixels=10**6)
    assert (decoded.width, decoded.height) == (16, 16)


def text_chunk(kind: bytes, key: bytes, text: bytes) -> bytes:
    """A PNG text chunk holding ``text`` under ``key``: tEXt as it stands, zTXt and iTXt compressed."""
    if kind == b"tEXt":
        return png_chunk(kind, key + b"\x00" + text)
    if kind == b"zTXt":
        return png_chunk(kind, key + b"\x00\x00" + zlib.compress(text, 9))
    return png_chunk(kind, key + b"\x00\x01\x00\x00\x00" + zlib.compress(text, 9))


def with_chunks_around_pixel_data(data: bytes, before: bytes, after: bytes) -> bytes:
    """``data``, a PNG, with ``before`` just after its header and ``after`` just before its IEND."""
    return data[:33] + before + data[33:-12] + after + data[-12:]


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_png_text_chunk_inflating_past_pillows_limit_is_no_reason_to_refuse_the_image(kind):
    """Editors and image generators embed XMP and workflows in text chunks, which the result does not carry
    (docs/inputs.md, "Metadata"); Pillow refuses one inflating past MAX_TEXT_CHUNK as if the file were corrupt."""
    text = text_chunk(kind, b"workflow", b"{}" * PngImagePlugin.MAX_TEXT_CHUNK)
    data = with_chunks_around_pixel_data(save(Image.fromarray(pattern())), text, text)
    assert np.array_equal(images.decode(data, LIMIT).colour, pattern())


def test_decoding_a_png_holds_none_of_its_text():
    """60 zTXt chunks of 1 MiB each inflated, 62 kB uploaded, made the decoder hold 61 MiB that no reservation
    counted; past MAX_TEXT_MEMORY in all (64 MiB), Pillow refused the image."""
    megabyte = PngImagePlugin.MAX_TEXT_CHUNK
    texts = [text_chunk(b"zTXt", f"note {index}".encode(), bytes(megabyte)) for index in range(70)]
    data = with_chunks_around_pixel_data(save(Image.fromarray(pattern())), b"".join(texts[:35]), b"".join(texts[35:]))
    decoded, peak = traced_decode(data)
    assert np.array_equal(decoded.colour, pattern())
    assert peak < megabyte


# Metadata of 6 MB in pieces as large as each format allows (a JPEG segment holds at most 65533 bytes).
METADATA_BYTES, METADATA_PIECE = 6_000_000, 60_000


def random_bytes(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()


def metadata_pieces() -> list[bytes]:
    data = random_bytes(METADATA_BYTES)
    return [data[start:start + METADATA_PIECE] for start in range(0, METADATA_BYTES, METADATA_PIECE)]


def png_with_private_chunks(plain: bytes) -> tuple[bytes, bytes]:
    """The PNG ``plain`` with private chunks (a lower-case second letter, which Pillow keeps as they stand) around its
    pixel data."""
    chunks = [png_chunk(b"prVt", piece) for piece in metadata_pieces()]
    half = len(chunks) // 2
    return with_chunks_around_pixel_data(plain, b"".join(chunks[:half]), b"".join(chunks[half:])), plain


def jpeg_with_segments() -> tuple[bytes, bytes]:
    """A JPEG with application segments (APP1 but EXIF, APP3, APP13) and comments after its start marker, and its
    EXIF orientation among them."""
    plain = save(Image.fromarray(pattern()), "JPEG", exif=exif_orientation(6))
    markers = (b"\xff\xe1", b"\xff\xe3", b"\xff\xed", b"\xff\xfe")
    segments = b"".join(markers[index % len(markers)] + struct.pack(">H", len(piece) + 2) + piece
                        for index, piece in enumerate(metadata_pieces()))
    return plain[:2] + segments + plain[2:], plain


def gif_with_a_long_comment() -> tuple[bytes, bytes]:
    image = Image.fromarray(pattern()).quantize()
    return save(image, "GIF", comment=random_bytes(METADATA_BYTES)), save(image, "GIF")


@pytest.mark.parametrize("build", [
    lambda: png_with_private_chunks(save(Image.fromarray(pattern()))),
    lambda: png_with_private_chunks(png16(levels16(3))),  # read by pypng
    jpeg_with_segments, gif_with_a_long_comment,
], ids=["png-private-chunks", "png16-private-chunks", "jpeg-segments", "gif-comment"])
def test_decoding_holds_none_of_the_metadata_the_result_does_not_carry(build):
    """Pillow kept a PNG's private chunks (also opening a 16-bit one, which pypng reads), a JPEG's application segments and comments and a GIF's comment (joined,
    6 MB each here, up to the upload's size), outside the memory budget; the decoder is not shown them, and the
    pixels, orientation and all, are those of the file without them."""
    data, plain = build()
    decoded, peak = traced_decode(data)
    assert np.array_equal(decoded.colour, images.decode(plain, LIMIT).colour)
    assert peak < METADATA_BYTES // 6


def tiff_with_a_tagged_reduced_copy() -> tuple[bytes, bytes]:
    """A TIFF whose second directory, a reduced-resolution copy (left out of the answer), holds an XMP tag."""
    first, copy = Image.fromarray(pattern()), Image.fromarray(pattern(8, 8))
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as tiff:
        first.save(tiff, "TIFF")
        tiff.newFrame()
        copy.save(tiff, "TIFF", tiffinfo={images.TIFF_NEW_SUBFILE_TYPE: 1, 700: random_bytes(METADATA_BYTES)})
        tiff.newFrame()
    return buffer.getvalue(), save(first, "TIFF")


def test_a_tiffs_second_directory_is_read_without_holding_its_values():
    """Whether the second directory is a page was asked of Pillow's seek, which held each of its values twice (40
    MiB for a 20 MiB tag) outside the memory budget; the directory walk reads the one tag it needs in place."""
    data, plain = tiff_with_a_tagged_reduced_copy()
    decoded, peak = traced_decode(data)
    assert np.array_equal(decoded.colour, images.decode(plain, LIMIT).colour)
    assert peak < METADATA_BYTES // 6


def test_decoding_a_png_holds_no_copy_of_its_exif_chunk():
    """The orientation is read from the EXIF chunk in place: it was copied five times (30 MB for 6 MB of EXIF)."""
    data = with_chunk_after_header(save(Image.fromarray(pattern())),
                                   png_chunk(b"eXIf", exif_orientation(6) + random_bytes(METADATA_BYTES)))
    decoded, peak = traced_decode(data)
    assert np.array_equal(decoded.colour, np.rot90(pattern(), -1))
    assert peak < METADATA_BYTES // 6


@pytest.mark.parametrize("image_format, options", [
    ("TIFF", {"tiffinfo": {700: random_bytes(METADATA_BYTES)}}),  # an XMP tag
    ("WEBP", {"lossless": True, "exif": b"Exif\x00\x00" + random_bytes(METADATA_BYTES // 2),
              "xmp": random_bytes(METADATA_BYTES // 2)}),
], ids=["tiff-xmp-tag", "webp-exif-xmp"])
def test_decoding_holds_at_most_the_copies_of_the_metadata_that_the_memory_budget_counts(image_format, options):
    """A TIFF's offsets and a WebP's length leave its decoder to be shown the metadata, whose copies the request's
    reservation counts (``memory.sent_bytes``), where none were: decoding 6 MB of XMP in a TIFF peaked at 18 MB
    traced, and a WebP's copies (the upload joined again, its EXIF and XMP) at twice its metadata. libwebp's copy of
    the upload, which tracemalloc does not see, is counted beside them."""
    plain, data = (save(Image.fromarray(pattern()), image_format, **given) for given in ({}, options))
    header = images.read_header(data, LIMIT)
    (_, peak), (_, pixels_peak) = traced_decode(data), traced_decode(plain)
    assert header.metadata_bytes >= METADATA_BYTES
    beside_upload = memory.sent_bytes(len(data), 0, 0, "png", False, image_format, header.metadata_bytes) - len(data)
    assert METADATA_BYTES < peak <= beside_upload + pixels_peak


def traced_decode(data: bytes) -> tuple[images.DecodedImage, int]:
    """The image ``data`` decodes to, and the peak that tracemalloc saw while it did."""
    tracemalloc.start()
    try:
        decoded = images.decode(data, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return decoded, peak
