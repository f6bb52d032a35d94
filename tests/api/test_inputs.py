"""Every input mode, option and limit through POST /model/predict, with the real SRGAN on tiny images.

Most inputs are 16x16 so the network traces one window shape for all of them.
"""
from __future__ import annotations

import io
import re
import struct

import numpy as np
import png
import pytest
from PIL import Image

from core import pipeline
from tests.core.test_images import (
    BAD_INPUTS,
    MODES,
    exif_orientation,
    grey_profile,
    levels16,
    longest_jpeg_profile_and_one_byte,
    pattern,
    png16,
    png_chunk,
    png_header_only,
    rgba_image,
    save,
    srgb_profile,
    with_chunk_after_header,
)
from harness.tiff_writer import tiff
from tests.core.test_tiff16 import MIN_IS_BLACK as tiff_grey, RGB as tiff_rgb, levels as tiff_levels


def post(client, data: bytes, **fields):
    form = dict(fields, image=(io.BytesIO(data), "upload"))
    return client.post("/model/predict", data=form, content_type="multipart/form-data")


def opened(response) -> Image.Image:
    image = Image.open(io.BytesIO(response.data))
    image.load()
    return image


def read_png16(data: bytes) -> tuple[np.ndarray, dict]:
    width, height, rows, info = png.Reader(bytes=data).read()
    pixels = np.vstack([np.frombuffer(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    return pixels, info


def assert_message(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.data
    assert response.is_json and set(response.json) == {"message"}
    for fragment in fragments:
        assert fragment in response.json["message"]


# --- Modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODES)
def test_every_mode_is_upscaled_keeping_grey_and_alpha(client, name):
    build, channels, has_alpha = MODES[name]
    response = post(client, build())
    assert response.status_code == 200, response.data
    result = opened(response)
    assert result.size == (64, 64)
    assert result.mode == {(1, False): "L", (1, True): "LA", (3, False): "RGB", (3, True): "RGBA"}[channels, has_alpha]


def test_alpha_is_upscaled_with_the_image(client):
    result = np.asarray(opened(post(client, save(rgba_image()))))
    # the left half was transparent, the right half opaque; Lanczos rings only within 3 source pixels of the edge
    assert (result[:, :20, 3] == 0).all() and (result[:, 44:, 3] == 255).all()
    assert result[:, :, :3].std() > 10


def test_a_cut_out_has_no_dark_fringe(client):
    """A white disc on fully transparent black, the way editors save a cut-out: where the upscaled alpha is
    partly opaque the colour must still be the disc's, or the edge shows a dark ring over any background."""
    y, x = np.mgrid[0:32, 0:32]
    disc = np.zeros((32, 32, 4), np.uint8)
    disc[(y - 15.5) ** 2 + (x - 15.5) ** 2 < 100] = 255
    result = np.asarray(opened(post(client, save(Image.fromarray(disc)))), np.float32)
    opacity = result[..., 3:] / 255
    over_white = result[..., :3] * opacity + 255 * (1 - opacity)
    assert (opacity > 0).sum() > (disc[..., 3] > 0).sum() * 16  # the edge's partly opaque pixels are there
    assert over_white.min() > 200


def test_grey_in_gives_grey_out_with_the_same_levels(client):
    grey = Image.fromarray(pattern()).convert("L")
    result = opened(post(client, save(grey)))
    assert result.mode == "L"
    assert abs(np.asarray(result, np.float32).mean() - np.asarray(grey, np.float32).mean()) < 8


def test_a_dark_image_stays_dark(client):
    # Levels are scaled by the format's fixed maximum, never by the image's own brightest pixel.
    dark = (pattern().astype(np.uint16) * 40 // 255).astype(np.uint8)
    result = np.asarray(opened(post(client, save(Image.fromarray(dark)))), np.float32)
    assert dark.max() == 40 and abs(result.mean() - dark.mean()) < 4


def test_an_animated_gif_is_400_rather_than_its_first_frame_alone(client):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert_message(post(client, data), 400, "the GIF image is an animation of more than one frame", "send one frame")


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "RGB", "RGBA"])
def test_16_bit_png_answers_16_bit_png_with_its_levels(client, channels):
    # a smooth ramp high in the range: wrapping modulo 256 or an 8-bit path would show at once
    ramp = np.linspace(40000, 60000, 16 * 16).reshape(16, 16).astype(np.uint16)
    pixels = np.repeat(ramp[..., None], channels, axis=-1)
    response = post(client, png16(pixels))
    assert response.status_code == 200 and response.mimetype == "image/png"
    result, info = read_png16(response.data)
    assert info["bitdepth"] == 16 and info["planes"] == channels and result.shape[:2] == (64, 64)
    assert result.min() > 30000
    assert abs(result[..., 0].astype(float).mean() - ramp.mean()) < 0.02 * ramp.mean()
    assert len(np.unique(result[..., 0])) > 256, "levels were cut to 8 bits"


@pytest.mark.parametrize("channels", [2, 3, 4], ids=["grey+alpha", "RGB", "RGBA"])
def test_16_bit_tiff_answers_16_bit_png_with_its_levels(client, channels):
    """Pillow read these at 8 bits (grey and alpha not at all): at scale 1 and strength 0 every level comes back."""
    pixels = tiff_levels(16, 16, channels)
    data = tiff(pixels, tiff_rgb if channels > 2 else tiff_grey, extra=(2,) * (channels % 2 == 0))
    response = post(client, data, scale="1", strength="0")
    assert response.status_code == 200 and response.mimetype == "image/png", response.data
    result, info = read_png16(response.data)
    assert info["bitdepth"] == 16 and np.array_equal(result, pixels)


def test_16_bit_png_to_jpeg_rounds_to_8_bits(client):
    pixels = np.full((16, 16, 3), 257 * 200, np.uint16)
    response = post(client, png16(pixels), format="jpeg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert abs(np.asarray(opened(response), np.float32).mean() - 200) < 6


# --- Metadata -----------------------------------------------------------------------------------


def test_exif_orientation_is_applied_before_upscaling(client):
    halves = np.zeros((8, 16, 3), np.uint8)
    halves[:, :8] = (255, 0, 0)
    halves[:, 8:] = (0, 0, 255)
    data = save(Image.fromarray(halves), "JPEG", quality=95, exif=exif_orientation(6))
    result = np.asarray(opened(post(client, data)), np.float32)
    # rotated 90 degrees clockwise for display: 8 wide, 16 tall; the left (red) half is now on top
    assert result.shape == (64, 32, 3)
    assert result[:24, :, 0].mean() > 200 and result[40:, :, 2].mean() > 200


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_icc_profile_is_carried_to_the_output(client, output_format):
    profile = srgb_profile()
    response = post(client, save(Image.fromarray(pattern()), icc_profile=profile), format=output_format)
    assert opened(response).info.get("icc_profile") == profile


def test_icc_profile_is_carried_to_16_bit_output(client):
    data = save(Image.fromarray(pattern()), icc_profile=srgb_profile())
    source = Image.open(io.BytesIO(data))
    chunk_start = data.find(b"iCCP") - 4
    chunk_end = chunk_start + 12 + int.from_bytes(data[chunk_start:chunk_start + 4], "big")
    sixteen = png16(levels16(3))
    response = post(client, sixteen[:33] + data[chunk_start:chunk_end] + sixteen[33:])
    assert response.status_code == 200
    assert opened(response).info.get("icc_profile") == source.info["icc_profile"]


def test_a_profile_longer_than_jpeg_holds_is_400_for_jpeg_before_any_upscaling(client, monkeypatch):
    """Pillow would write it with its markers' one-byte count wrapped around: a JPEG whose profile no viewer reads."""
    monkeypatch.setattr(pipeline, "run", lambda *args: pytest.fail("nothing should be decoded or upscaled"))
    data = save(Image.fromarray(pattern()), "TIFF", icc_profile=longest_jpeg_profile_and_one_byte())
    assert_message(post(client, data, format="jpeg"), 400, "jpeg holds an ICC profile of at most", "png or webp")


def test_a_grey_image_with_a_grey_profile_is_400_for_webp_before_any_upscaling(client, monkeypatch):
    monkeypatch.setattr(pipeline, "run", lambda *args: pytest.fail("nothing should be decoded or upscaled"))
    grey = save(Image.fromarray(pattern()).convert("L"), "JPEG", icc_profile=grey_profile())
    assert_message(post(client, grey, format="webp"), 400, "webp holds no grey", "ask for format png or jpeg")


def with_colour_chunks(data: bytes) -> bytes:
    """A PNG marked as linear (gamma 1.0) with its primaries and an sRGB rendering intent: viewers map its levels by
    these chunks, so an answer without them would look darker."""
    chromaticity = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
    chunks = png_chunk(b"gAMA", struct.pack(">I", 100000)) + png_chunk(b"cHRM", chromaticity)
    return with_chunk_after_header(data, chunks + png_chunk(b"sRGB", b"\x01"))


@pytest.mark.parametrize("source", ["8-bit", "16-bit"])
def test_png_gamma_primaries_and_srgb_chunks_are_carried_to_png_output(client, source):
    plain = save(Image.fromarray(pattern())) if source == "8-bit" else png16(levels16(3))
    response = post(client, with_colour_chunks(plain))
    assert response.status_code == 200, response.data
    info = opened(response).info
    assert info["gamma"] == 1.0 and info["srgb"] == 1
    assert info["chromaticity"] == (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)


def test_a_linear_png_is_400_for_jpeg_before_any_upscaling(client, monkeypatch):
    """Its levels are light itself (gamma 1.0); a JPEG of them would be read as sRGB and show far darker."""
    monkeypatch.setattr(pipeline, "run", lambda *args: pytest.fail("nothing should be decoded or upscaled"))
    linear = with_chunk_after_header(save(Image.fromarray(pattern())), png_chunk(b"gAMA", struct.pack(">I", 100000)))
    assert_message(post(client, linear, format="jpeg"), 400, "the PNG's gAMA says its levels are not sRGB",
                   "ask for format png")


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_the_resolution_is_carried_unchanged_so_the_print_grows_with_the_pixels(client, output_format):
    """As an editor's resize with resampling does: 300 dpi stays 300 dpi, and the 4x image prints 4x as wide."""
    data = save(Image.fromarray(pattern()), dpi=(300, 150))
    response = post(client, data, format=output_format)
    assert response.status_code == 200, response.data
    assert opened(response).info["dpi"] == pytest.approx((300, 150), abs=0.02)


# --- Options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_scale_gives_the_exact_size(client, scale):
    response = post(client, save(rgba_image()), scale=str(scale))
    result = opened(response)
    assert result.size == (16 * scale, 16 * scale) and result.mode == "RGBA"
    assert response.headers["X-Output-Size"] == f"{16 * scale}x{16 * scale}"


def test_scale_works_as_a_query_parameter(client):
    response = client.post("/model/predict?scale=2", data={"image": (io.BytesIO(save(rgba_image())), "a.png")})
    assert opened(response).size == (32, 32)


@pytest.mark.parametrize("output_format, content_type, pillow_format", [
    ("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")])
def test_format_sets_the_encoding_and_the_content_type(client, output_format, content_type, pillow_format):
    response = post(client, save(Image.fromarray(pattern())), format=output_format)
    assert response.status_code == 200 and response.mimetype == content_type
    assert opened(response).format == pillow_format


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_quality_trades_size_for_fidelity(client, output_format):
    data = save(Image.fromarray(pattern()))
    low, high = (post(client, data, format=output_format, quality=str(q)).data for q in (5, 100))
    assert len(low) < len(high) / 2


def test_webp_keeps_alpha(client):
    assert opened(post(client, save(rgba_image()), format="webp")).mode == "RGBA"


def test_jpeg_of_a_transparent_image_is_400_before_any_upscaling(client):
    assert_message(post(client, save(rgba_image()), format="jpeg"), 400, "jpeg cannot hold transparency",
                   "png or webp")


def test_jpeg_of_an_opaque_rgba_image_drops_the_empty_alpha(client):
    opaque = Image.fromarray(pattern()).convert("RGBA")
    response = post(client, save(opaque), format="jpeg")
    assert response.status_code == 200 and opened(response).mode == "RGB"


# --- Limits -------------------------------------------------------------------------------------


def test_upload_over_the_byte_limit_is_413_naming_the_limit_and_the_size(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 1000)
    response = post(client, bytes(2000))
    assert_message(response, 413, "limit is 1000 bytes (MAX_UPLOAD_BYTES)")
    assert int(re.search(r"request is (\d+) bytes", response.json["message"]).group(1)) > 2000


def test_png_header_declaring_20000_by_20000_is_413(client, service):
    response = post(client, png_header_only(20000, 20000))
    assert_message(response, 413, "20000x20000", f"limit is {service.settings.max_input_pixels} input pixels",
                   "MAX_INPUT_PIXELS")


def test_input_pixel_limit_is_413_with_the_size(client, service, monkeypatch):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_input_pixels": 255}))
    assert_message(post(client, save(Image.fromarray(pattern()))), 413, "16x16 = 256 pixels", "limit is 255")


def test_output_pixel_limit_is_413_with_the_size(client, service, monkeypatch):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": 4095}))
    assert_message(post(client, save(Image.fromarray(pattern()))), 413, "64x64 = 4096 pixels", "limit is 4095",
                   "MAX_OUTPUT_PIXELS")


def test_output_pixel_limit_counts_the_models_4x_result_even_for_scale_2(client, service, monkeypatch):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": 4095}))
    assert_message(post(client, save(Image.fromarray(pattern())), scale="2"), 413,
                   "the model's 4x result would be 64x64 = 4096 pixels")


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_400_saying_what_is_wrong(client, name):
    build, fragment = BAD_INPUTS[name]
    assert_message(post(client, build()), 400, fragment)


def test_options_appear_in_swagger_with_their_ranges_and_defaults(client):
    """Each default is said in the description, not published as one: Swagger UI would send it."""
    operation = client.get("/swagger.json").json["paths"]["/model/predict"]["post"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert (parameters["scale"]["minimum"], parameters["scale"]["maximum"]) == (1, 8)
    assert parameters["scale"]["type"] == "number" and parameters["scale"]["description"].endswith("(default: 4)")
    assert (parameters["strength"]["minimum"], parameters["strength"]["maximum"]) == (0, 1)
    assert parameters["strength"]["description"].endswith("(default: 1)")
    assert parameters["fit"]["enum"] == ["contain", "cover", "fill"]
    assert parameters["fit"]["description"].endswith("(default: contain)")
    assert parameters["width"]["type"] == parameters["height"]["type"] == "integer"
    assert parameters["width"]["maximum"] == parameters["height"]["maximum"] == 2**31 - 1
    assert parameters["format"]["enum"] == ["png", "jpeg", "webp"]
    assert parameters["format"]["description"].endswith("(default: png)")
    assert (parameters["quality"]["minimum"], parameters["quality"]["maximum"]) == (1, 100)
    assert parameters["quality"]["description"].endswith("(default: 90)")
    assert not any("default" in parameter for parameter in parameters.values())
    assert set(operation["produces"]) == {"image/png", "image/jpeg", "image/webp"}
