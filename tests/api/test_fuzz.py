"""Property-based fuzzing: thousands of mutated image files at the decoder and at /model/predict.

Every answer must be a decoded image (200) or a 400/413 with a message: never another exception, never a 5xx.
Seeds are 8x8 so each example costs milliseconds.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from core import images
from core.formats import OUTPUT_FORMATS
from core.options import OPTIONS
from core.png_encoder import SIGNATURE as PNG_SIGNATURE
from core.errors import InvalidImage, TooLarge
from tests.core.test_images import levels16, pattern, png16, save
from harness.tiff_writer import DEFLATE, LZW, tiff
from tests.core.test_tiff16 import RGB, levels as tiff_levels

LIMIT = 64 * 64
# Pillow warns about the corrupt EXIF and TIFF tags the mutations make; the answers are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")


def seeds() -> list[bytes]:
    rgb = Image.fromarray(pattern(8, 8))
    rgba = Image.fromarray(np.dstack([pattern(8, 8), np.arange(64, dtype=np.uint8).reshape(8, 8) * 4]))
    palette = rgb.quantize(8)
    palette.info["transparency"] = 0
    frames = [rgb, rgb.transpose(Image.Transpose.ROTATE_90)]
    return [
        save(rgb), save(rgba), save(palette), save(rgb.convert("L"), interlace=True), save(rgb.convert("1")),
        png16(levels16(3, 8, 8)), png16(levels16(2, 8, 8)),
        save(rgb, "JPEG"), save(rgb, "JPEG", progressive=True), save(rgb.convert("CMYK"), "JPEG"),
        save(rgb, "GIF"), save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        save(rgb, "WEBP"), save(rgba, "WEBP", lossless=True),
        save(rgb, "TIFF"), save(rgba, "TIFF", compression="tiff_lzw"), save(Image.fromarray(levels16(1, 8, 8)[..., 0]), "TIFF"),
        save(rgb, "BMP"), save(palette, "BMP"),
        tiff(tiff_levels(8, 8, 4), RGB, extra=(2,), compression=DEFLATE, predictor=True, tile=16),
        tiff(tiff_levels(8, 8, 3), RGB, compression=LZW, predictor=True, orientation=6, order=">"),
    ]


SEEDS = seeds()


@st.composite
def mutated_files(draw) -> bytes:
    """A valid tiny file with one to four edits: bit flips, byte overwrites, cuts, insertions, splices."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    # Uniform positions: hypothesis's own integers favour small ones, which would mostly break the magic number.
    rng = draw(st.randoms(use_true_random=True))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = rng.randrange(len(data))
        edit = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "splice", "repeat"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "byte":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif edit == "truncate":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif edit == "splice":  # the head of this file, the tail of another
            other = draw(st.sampled_from(SEEDS))
            data = data[:at] + other[rng.randrange(len(other)):]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 32))]
    # Checksums stop most PNG edits before the decoder; an attacker can recompute them, so do that half the time.
    return with_png_checksums_fixed(bytes(data)) if draw(st.booleans()) else bytes(data)


def with_png_checksums_fixed(data: bytes) -> bytes:
    """Recompute the CRC of every whole chunk of a PNG (anything else is returned as it is)."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    fixed = bytearray(data)
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(fixed):
        length = struct.unpack(">I", fixed[position:position + 4])[0]
        end = position + 12 + length
        if end > len(fixed):
            break
        fixed[end - 4:end] = struct.pack(">I", zlib.crc32(fixed[position + 4:end - 4]))
        position = end
    return bytes(fixed)


def assert_decoded_or_refused(data: bytes) -> None:
    try:
        image = images.decode(data, LIMIT)
    except (InvalidImage, TooLarge) as error:
        assert error.message and error.status in (400, 413)
        return
    assert image.colour.dtype in (np.uint8, np.uint16) and image.colour.shape[-1] in (1, 3)
    assert 1 <= image.width * image.height <= LIMIT
    assert image.alpha is None or (image.alpha.shape == image.colour.shape[:2] and image.alpha.dtype == image.colour.dtype)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_decoder_answers_every_mutated_file_with_an_image_or_a_4xx(data):
    assert_decoded_or_refused(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_decoder_answers_random_bytes_with_a_4xx(data):
    assert_decoded_or_refused(data)


def post(client, data: bytes, **fields):
    form = dict(fields, image=(io.BytesIO(data), "upload"))
    return client.post("/model/predict", data=form, content_type="multipart/form-data")


def assert_no_server_error(response) -> None:
    assert response.status_code in (200, 400, 413), (response.status_code, response.data[:200])
    if response.status_code != 200:
        assert response.is_json and response.json["message"]


@pytest.fixture()
def decode_only(service, monkeypatch):
    """Every decodable upload stops at the output limit, so the endpoint runs all of its checks but no network."""
    monkeypatch.setattr(service, "settings", service.settings.model_copy(
        update={"max_input_pixels": LIMIT, "max_output_pixels": 1}))


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated_files(), output_format=st.sampled_from(["png", "jpeg", "webp"]))
def test_endpoint_never_answers_5xx_to_mutated_files(app, decode_only, data, output_format):
    response = post(app.test_client(), data, format=output_format)
    assert_no_server_error(response)
    assert response.status_code != 200


@pytest.fixture()
def small_inputs(service, monkeypatch):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_input_pixels": 16 * 16}))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated_files(), output_format=st.sampled_from(["png", "jpeg", "webp"]),
       scale=st.sampled_from(["2", "3", "4"]))
def test_endpoint_upscales_or_refuses_mutated_files_with_the_real_model(app, small_inputs, data, output_format,
                                                                         scale):
    response = post(app.test_client(), data, format=output_format, scale=scale)
    assert_no_server_error(response)
    if response.status_code == 200:
        result = Image.open(io.BytesIO(response.data))
        result.load()
        assert result.format == OUTPUT_FORMATS[output_format][0]


# --- Forms ----------------------------------------------------------------------------------------

FIELD_NAMES = ["image", *(option.name for option in OPTIONS), "Image", "SCALE", "", " scale", "x", "_charset_"]


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    """A multipart body of random fields (text or file parts, repeated, misnamed), then perhaps cut or edited."""
    fields = MultiDict()
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(FIELD_NAMES))
        if draw(st.booleans()):
            fields.add(name, draw(st.text(max_size=12)))
        else:
            upload = draw(st.sampled_from([SEEDS[0], b"", b"not an image"]))
            fields.add(name, FileStorage(io.BytesIO(upload), draw(st.sampled_from(["a.png", "", 'q"\r\n\u00e9.png']))))
    boundary, body = encode_multipart(fields, boundary="fuzz")  # its own boundary draws from random
    data = bytearray(body)
    rng = draw(st.randoms(use_true_random=True))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            at = rng.randrange(len(data))
            data[at:at + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
    return bytes(data), f"multipart/form-data; boundary={boundary}"


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=multipart_bodies(), route=st.sampled_from(["/model/predict", "/app/upscale"]),
       query=st.sampled_from(["", "?scale=2", "?image=x", "?scale=", "?SCALE=2&scale=3"]))
def test_both_image_routes_answer_any_form_with_a_4xx_naming_it(app, decode_only, body, route, query):
    """No form reaches the network here (the output limit is 1 pixel): each is refused with a JSON message."""
    data, content_type = body
    response = app.test_client().post(route + query, data=data, content_type=content_type)
    assert response.status_code in (400, 413), (response.status_code, response.data[:200])
    assert response.is_json and response.json["message"]
