"""The options schema through both routes, /model/predict and the page's /app/upscale, with the real SRGAN.

Inputs are tiny (at most 16 px a side) so each answer costs milliseconds.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import core.pipeline
from core import images
from core.resize import resize
from core.options import MAX_TARGET_SIDE, OPTIONS, quoted
from tests.conftest import SAMPLES
from tests.core.test_images import levels16, pattern, png16, rgba_image, save

WIDE = save(Image.fromarray(pattern(9, 15)))  # 15 x 9


def predict(client, data: bytes, **fields):
    return client.post("/model/predict", data=dict(fields, image=(io.BytesIO(data), "upload.png")),
                       content_type="multipart/form-data")


def page_events(client, data: bytes, **fields) -> tuple[int, list[dict] | dict]:
    """The page's route: (status, its events) when it streams, (status, the JSON error) when it refuses at once."""
    response = client.post("/app/upscale", data=dict(fields, image=(io.BytesIO(data), "upload.png")),
                           content_type="multipart/form-data")
    if response.mimetype != "application/x-ndjson":
        return response.status_code, response.json
    return response.status_code, [json.loads(line) for line in response.data.splitlines() if line.strip()]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def ok(response) -> np.ndarray:
    assert response.status_code == 200, response.data
    return pixels(response.data)


# --- Sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, size", [
    ({}, (60, 36)),
    ({"scale": "4"}, (60, 36)),
    ({"scale": "2"}, (30, 18)),
    ({"scale": "1.5"}, (23, 14)),        # 22.5 and 13.5 round half up
    ({"scale": "1"}, (15, 9)),
    ({"scale": "8"}, (120, 72)),         # two model passes
    ({"scale": "5.5"}, (83, 50)),        # 82.5 -> 83, 49.5 -> 50
    ({"width": "40"}, (40, 24)),
    ({"height": "20"}, (33, 20)),        # 33.3 -> 33
    ({"width": "30", "height": "30"}, (30, 18)),                  # contain
    ({"width": "30", "height": "30", "fit": "contain"}, (30, 18)),
    ({"width": "30", "height": "30", "fit": "cover"}, (30, 30)),
    ({"width": "30", "height": "30", "fit": "fill"}, (30, 30)),
])
def test_every_sizing_mode_gives_its_size(client, fields, size):
    response = predict(client, WIDE, **fields)
    assert ok(response).shape[1::-1] == size
    assert response.headers["X-Output-Size"] == f"{size[0]}x{size[1]}"


@pytest.mark.parametrize("shape, fields, size", [
    ((16, 1), {"scale": "2.5"}, (3, 40)),      # 1 x N
    ((1, 16), {"scale": "2.5"}, (40, 3)),      # N x 1
    ((16, 1), {"height": "100"}, (6, 100)),    # 6.25 -> 6
    ((1, 16), {"width": "128"}, (128, 8)),     # 8x: two passes on a one-pixel-high image
    ((16, 1), {"width": "4", "height": "16", "fit": "cover"}, (4, 16)),
])
def test_extreme_aspect_ratios(client, shape, fields, size):
    data = save(Image.fromarray(pattern(*shape)))
    assert ok(predict(client, data, **fields)).shape[1::-1] == size


def test_scale_2_is_the_lanczos_downscale_of_the_4x_answer_as_before(client):
    four, two = ok(predict(client, WIDE)), ok(predict(client, WIDE, scale="2"))
    assert np.array_equal(two, resize(four.astype(np.uint8), (30, 18)))


def test_cover_is_the_centre_of_the_enlargement_that_covers_the_box(client):
    covered = ok(predict(client, WIDE, width="30", height="30", fit="cover"))
    enlarged = ok(predict(client, WIDE, width="50"))  # 50 x 30 covers the 30 x 30 box
    assert enlarged.shape[:2] == (30, 50)
    assert np.array_equal(covered, enlarged[:, 10:40])


# 200 x 20 of two photos side by side: a strip whose cover of a square box throws most of its enlargement away.
STRIP_PHOTO = Image.fromarray(np.hstack([
    np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))[50:70],
    np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"))[40:60, :72]]))
STRIP = save(STRIP_PHOTO)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def whole_then_cut(client, data: bytes, box: int, **fields) -> np.ndarray:
    """The old cover: the strip's whole enlargement to the box's height, its centre cut out as the crop offset
    ⌊(enlarged − box) / 2⌋ defines it."""
    enlarged = ok(predict(client, data, height=str(box), **fields))
    left = (enlarged.shape[1] - box) // 2
    return enlarged[:, left:left + box]


@pytest.mark.parametrize("box", [80, 60, 120])  # the native 4x, 3x (a Lanczos reduction), 6x (two passes)
def test_cover_runs_the_network_on_the_part_of_a_strip_the_box_needs_and_matches_the_whole(client, service,
                                                                                           monkeypatch, box):
    """A 200 x 20 strip into a square box: its enlargement is ten times the box's width; the work cut first
    fits a limit that the whole enlargement (and its model pass) is over, and gives the same centre."""
    reference = whole_then_cut(client, STRIP, box)
    made = []
    real_run = core.pipeline._run_network
    monkeypatch.setattr(core.pipeline, "_run_network",
                        lambda colour, *args: made.append(colour.shape[:2]) or real_run(colour, *args))
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": box * box * 5}))
    covered = ok(predict(client, STRIP, width=str(box), height=str(box), fit="cover"))
    assert covered.shape == (box, box, 3)
    assert made and all(width < 200 for _, width in made), made
    assert psnr(covered, reference) >= 45


def test_the_ensemble_limit_counts_the_part_of_the_input_cover_runs(client, service, monkeypatch):
    """The ensemble runs the network 8 times on the 52 x 20 part of the strip an 80 x 80 box needs, not on its
    200 x 20: a limit below the strip's pixels but above the part's serves it."""
    fields = {"width": "80", "height": "80", "fit": "cover", "ensemble": "true"}
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_ensemble_pixels": 1040}))
    assert ok(predict(client, STRIP, **fields)).shape == (80, 80, 3)
    refused = predict(client, STRIP, height="80", ensemble="true")  # the whole strip, enlarged whole
    assert refused.status_code == 413 and "the image is 200x20 = 4000 pixels" in refused.json["message"]
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_ensemble_pixels": 1039}))
    refused = predict(client, STRIP, **fields)
    assert refused.status_code == 413 and refused.json["message"].startswith(
        "ensemble runs the network 8 times: the part of the 200x20 image that the 80x80 box needs is 52x20 = 1040 "
        "pixels and the limit for ensemble is 1039 pixels (MAX_ENSEMBLE_PIXELS)")


def test_cover_cuts_the_lanczos_blend_and_the_alpha_as_the_whole_enlargement_would(client):
    alpha = np.full((20, 200), 255, np.uint8)
    alpha[:, 90:110] = np.arange(20, dtype=np.uint8)[:, None] * 12
    data = save(Image.fromarray(np.dstack([np.asarray(STRIP_PHOTO), alpha])))
    for strength in ("0", "0.5"):
        reference = whole_then_cut(client, data, 60, strength=strength)
        covered = ok(predict(client, data, width="60", height="60", fit="cover", strength=strength))
        assert np.array_equal(covered[..., 3], reference[..., 3])
        if strength == "0":  # Lanczos alone: the very pixels of the whole resample's centre
            assert np.array_equal(covered, reference)
        assert psnr(covered[..., :3], reference[..., :3]) >= 45


def test_fill_stretches(client):
    stretched = ok(predict(client, WIDE, width="60", height="9", fit="fill"))
    assert stretched.shape[:2] == (9, 60)


def test_fill_keeps_the_detail_of_the_side_it_does_not_enlarge(client):
    """8 x 1: one-pixel rows of black and white must come back as rows, not as the grey of rows a second pass
    saw at a quarter of their number."""
    rows = np.zeros((16, 16, 3), np.uint8)
    rows[::2] = 255
    stretched = ok(predict(client, save(Image.fromarray(rows)), width="128", height="16", fit="fill"))
    assert stretched.shape[:2] == (16, 128)
    inner = stretched[2:-2, 8:-8, 0]  # away from the edges, where any network blurs
    assert np.abs(np.diff(inner, axis=0)).mean() > 100  # neighbouring rows still far apart


# --- Strength -----------------------------------------------------------------------------------


def pillow_lanczos(data: bytes, size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.resize(size, Image.Resampling.LANCZOS)).astype(np.int32)


@pytest.mark.parametrize("fields", [{}, {"scale": "2.5"}, {"width": "30", "height": "30", "fit": "cover"}])
def test_strength_mixes_the_model_with_a_lanczos_enlargement(client, fields):
    model = ok(predict(client, WIDE, **fields))
    assert np.array_equal(ok(predict(client, WIDE, strength="1", **fields)), model)
    lanczos = ok(predict(client, WIDE, strength="0", **fields))
    if "fit" not in fields:  # Pillow's own 8-bit LANCZOS; ours runs in float, so one level apart at most
        assert np.abs(lanczos - pillow_lanczos(WIDE, model.shape[1::-1])).max() <= 1
    assert np.abs(lanczos - model).mean() > 2, "the model and Lanczos should differ"
    half = ok(predict(client, WIDE, strength="0.5", **fields))
    assert np.array_equal(half, np.rint((model + lanczos) / 2))
    quarter = ok(predict(client, WIDE, strength="0.25", **fields))
    assert np.abs(quarter - (0.25 * model + 0.75 * lanczos)).max() <= 0.5


def test_strength_keeps_alpha_as_it_is(client):
    data = save(rgba_image())
    full, none = ok(predict(client, data)), ok(predict(client, data, strength="0"))
    assert full.shape[-1] == none.shape[-1] == 4
    assert np.array_equal(full[..., 3], none[..., 3])
    assert np.abs(full[..., :3] - none[..., :3]).mean() > 2


def test_strength_on_16_bit_stays_16_bit(client):
    data = png16(levels16(3))
    model = predict(client, data)
    lanczos = predict(client, data, strength="0")
    half = predict(client, data, strength="0.5")
    levels = [images.decode(r.data, 10**6).colour.astype(np.int64) for r in (model, lanczos, half)]
    assert all(level.dtype == np.int64 for level in levels) and levels[2].max() > 255
    assert images.decode(half.data, 10**6).colour.dtype == np.uint16
    assert np.array_equal(levels[2], np.rint((levels[0] + levels[1]) / 2))


def test_strength_0_runs_no_model(client, monkeypatch):
    import core.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the network ran")
    monkeypatch.setattr(core.pipeline, "run_tiles", refuse)
    assert ok(predict(client, WIDE, strength="0")).shape[:2] == (36, 60)


def test_ensemble_with_strength_0_is_refused_by_predict_where_no_model_runs(client):
    response = predict(client, WIDE, strength="0", ensemble="true")
    assert response.status_code == 400
    assert response.json["message"] == (
        "ensemble='true' changes only the model's output, and with strength='0' no model runs (the answer is the "
        "Lanczos enlargement alone): send a strength above 0, or leave it out")
    # Where they would change something, they are taken: a strength above 0, ensemble false.
    assert not np.array_equal(ok(predict(client, WIDE, strength="0.5", ensemble="true")),
                              ok(predict(client, WIDE, strength="0.5")))
    assert np.array_equal(ok(predict(client, WIDE, strength="0", ensemble="false")),
                          ok(predict(client, WIDE, strength="0")))


def test_the_page_runs_the_ensemble_at_strength_0_for_its_model_layer(client):
    status, events = page_events(client, WIDE, strength="0", ensemble="true")
    assert status == 200 and events[-1]["event"] == "result", events[-1]
    result = events[-1]
    assert np.array_equal(pixels(base64.b64decode(result["image"])), ok(predict(client, WIDE, strength="0")))
    assert np.array_equal(pixels(base64.b64decode(result["layers"]["model"])), ok(predict(client, WIDE, ensemble="true")))


# --- Limits before any work ---------------------------------------------------------------------


def test_every_intermediate_size_is_checked_before_the_network_runs(client, service, monkeypatch):
    import core.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the network ran")
    monkeypatch.setattr(core.pipeline, "run_tiles", refuse)
    data = save(Image.fromarray(pattern(7, 33)))
    # scale 5: 165 x 35 asked; the second pass lands on 168 x 36 before the Lanczos step
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": 165 * 35}))
    response = predict(client, data, scale="5")
    assert response.status_code == 413 and "the model's 4x result would be 168x36" in response.json["message"]
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": 1200}))
    response = predict(client, data, scale="1.5")  # 50 x 11 asked, but the first pass makes 132 x 28
    assert response.status_code == 413 and "the model's 4x result would be 132x28" in response.json["message"]
    # The page's route plans before it streams: the same 413, not an error event after a start event.
    status, error = page_events(client, data, width="200")
    assert status == 413 and "132x28" in error["message"]


def sizes(client, size: tuple[int, int], **fields):
    return client.get("/app/sizes", query_string=dict(fields, input_width=size[0], input_height=size[1]))


@pytest.mark.parametrize("data, fields, limit", [
    (save(Image.fromarray(pattern(7, 33))), {"scale": "5"}, 165 * 35),  # the output fits, the 4x pass's 168x36 not
    (save(Image.fromarray(pattern(7, 33))), {"scale": "1.5"}, 1200),     # 50 x 11 asked, the pass makes 132 x 28
    (STRIP, {"width": "80", "height": "80", "fit": "cover"}, 80 * 80 * 2),  # the part the box needs, 52 x 20
    (STRIP, {"width": "80", "height": "80", "fit": "cover"}, 80 * 80 - 1),  # the output itself
], ids=["second-pass", "first-pass", "cover-part", "cover-output"])
def test_the_pages_sizes_refuse_as_the_upscale_does_in_its_words(client, service, monkeypatch, data, fields, limit):
    """GET /app/sizes answers, from the image's size alone, the 413 that the upscale answers for MAX_OUTPUT_PIXELS
    (the page warns with it before sending), and no refusal where the upscale runs."""
    size = Image.open(io.BytesIO(data)).size
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": limit}))
    refused = predict(client, data, **fields)
    answer = sizes(client, size, **fields)
    assert refused.status_code == 413 and answer.status_code == 200
    assert answer.json["refusal"] == refused.json["message"]
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_output_pixels": 10 ** 6}))
    served = ok(predict(client, data, **fields))
    assert sizes(client, size, **fields).json == {"width": served.shape[1], "height": served.shape[0],
                                                           "refusal": None, "denoise_levels": ["none"]}


@pytest.mark.parametrize("fields", [{"height": "80"}, {"width": "80", "height": "80", "fit": "cover"}],
                         ids=["whole", "cover-part"])
def test_the_pages_sizes_refuse_the_ensemble_as_the_upscale_does(client, service, monkeypatch, fields):
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"max_ensemble_pixels": 1000}))
    refused = predict(client, STRIP, ensemble="true", **fields)
    assert refused.status_code == 413 and "MAX_ENSEMBLE_PIXELS" in refused.json["message"]
    assert sizes(client, (200, 20), ensemble="true", **fields).json["refusal"] == refused.json["message"]


@pytest.mark.parametrize("query, fragment", [
    ({"input_width": "0", "input_height": "7"}, "input_width must be a whole number from 1 to 2147483647, not '0'"),
    ({"input_width": "33"}, "input_height must be a whole number from 1 to 2147483647, not ''"),
    ({"input_width": "33", "input_height": "7", "scale": "9"}, "scale must be a number from 1 to 8"),
    ({"input_width": "33", "input_height": "7", "width": "1000"}, "would enlarge the 33x7 image 30.3 times"),
])
def test_the_pages_sizes_refuse_a_bad_query_with_a_400_naming_it(client, query, fragment):
    response = client.get("/app/sizes", query_string=query)
    assert response.status_code == 400 and fragment in response.json["message"]


# --- Bad values ---------------------------------------------------------------------------------

BAD_VALUES = [
    ("scale", "9", "a number from 1 to 8"),
    ("scale", "0.5", "a number from 1 to 8"),
    ("scale", "-2", "a number from 1 to 8"),
    ("scale", "x", "a number from 1 to 8"),
    ("scale", "nan", "a number from 1 to 8"),
    ("scale", "1e1", "a number from 1 to 8"),
    ("scale", "\u0663", "a number from 1 to 8"),      # ARABIC-INDIC DIGIT THREE: plain decimals are ASCII
    ("quality", "\uff19\uff10", "a whole number from 1 to 100"),  # FULLWIDTH 9 and 0
    ("width", "0", "a whole number from 1 to 2147483647"),
    ("width", "1.5", "a whole number from 1 to 2147483647"),
    ("height", "tall", "a whole number from 1 to 2147483647"),
    # Past the longest side an output can have: no longer a size to compute with (it overflowed floats).
    ("width", str(10**400), "a whole number from 1 to 2147483647"),
    ("height", str(10**400), "a whole number from 1 to 2147483647"),
    ("strength", "1.5", "a number from 0 to 1"),
    # Just past a bound, where a float rounds back onto it: the range is checked on the decimal as written.
    ("scale", "8.0000000000000000001", "a number from 1 to 8"),
    ("scale", "0.99999999999999999999", "a number from 1 to 8"),
    ("strength", "1.00000000000000000001", "a number from 0 to 1"),
    ("strength", "-0.1", "a number from 0 to 1"),
    ("strength", "half", "a number from 0 to 1"),
    ("format", "gif", "one of png, jpeg, webp (jpg for jpeg)"),
    ("quality", "0", "a whole number from 1 to 100"),
    ("quality", "101", "a whole number from 1 to 100"),
    ("quality", "9.5", "a whole number from 1 to 100"),
    ("ensemble", "maybe", "true or false (true/1/yes/on or false/0/no/off)"),
    ("model", "waifu2x", "one of srgan, srresnet"),
]


@pytest.mark.parametrize("field, value, allowed", BAD_VALUES)
def test_a_bad_value_is_the_same_400_on_both_routes(client, field, value, allowed):
    response = predict(client, WIDE, **{field: value})
    assert response.status_code == 400 and set(response.json) == {"message"}
    message = response.json["message"]
    assert f"{field} must be {allowed}, not {quoted(value)}" in message, message
    assert page_events(client, WIDE, **{field: value}) == (400, {"message": message})


@pytest.mark.parametrize("fields, fragments", [
    ({"scale": "2", "width": "40"}, ["scale cannot be combined with width or height", "scale='2'", "width='40'"]),
    ({"scale": "2", "height": "40"}, ["scale cannot be combined", "height='40'"]),
    ({"fit": "cover", "width": "40"}, ["fit applies only when both width and height are sent", "fit='cover'"]),
    ({"fit": "cover"}, ["fit applies only when both"]),
])
def test_options_that_do_not_go_together_are_400_on_both_routes(client, fields, fragments):
    response = predict(client, WIDE, **fields)
    assert response.status_code == 400
    assert all(fragment in response.json["message"] for fragment in fragments), response.json
    assert page_events(client, WIDE, **fields) == (400, response.json)


def test_every_bad_field_is_named_in_one_message(client):
    message = predict(client, WIDE, scale="9", quality="0", ensemble="maybe").json["message"]
    assert all(f"{name} must be" in message for name in ("scale", "quality", "ensemble")), message


@pytest.mark.parametrize("fields, refusal", [
    ({"width": "10"}, "width 10 would enlarge the 15x9 image 0.667 times"),
    ({"width": str(MAX_TARGET_SIDE), "height": str(MAX_TARGET_SIDE), "fit": "fill"},
     f"width {MAX_TARGET_SIDE} and height {MAX_TARGET_SIDE} would enlarge the 15x9 image 1.43e+08 x 2.39e+08 times"),
])
def test_a_target_out_of_range_for_this_image_names_it_on_both_routes(client, fields, refusal):
    response = predict(client, WIDE, **fields)
    assert response.status_code == 400
    assert refusal in response.json["message"], response.json
    status, refused = page_events(client, WIDE, **fields)  # from the header, before any stream starts
    assert (status, refused) == (400, response.json)


# --- One meaning on every route -----------------------------------------------------------------


@pytest.mark.parametrize("word", ["yes", "true", "1", "on", "TRUE"])
def test_ensemble_words_mean_true_on_both_routes(client, word):
    expected = ok(predict(client, WIDE, ensemble="true"))
    assert np.array_equal(ok(predict(client, WIDE, ensemble=word)), expected)
    assert np.array_equal(page_answer(client, WIDE, ensemble=word), expected)
    assert not np.array_equal(ok(predict(client, WIDE, ensemble="no")), expected)


@pytest.mark.parametrize("word", ["JPG", "jpg", "Jpeg", "JPEG"])
def test_format_names_in_any_case_and_jpg(client, word):
    response = predict(client, WIDE, format=word)
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    _, events = page_events(client, WIDE, format=word)
    assert events[-1]["content_type"] == "image/jpeg"


def page_answer(client, data: bytes, **fields) -> np.ndarray:
    status, events = page_events(client, data, **fields)
    assert status == 200 and events[-1]["event"] == "result", events[-1]
    return pixels(base64.b64decode(events[-1]["image"]))


@pytest.mark.parametrize("fields", [
    {}, {"scale": "2"}, {"scale": "1.5", "strength": "0.3"}, {"scale": "8"}, {"width": "30", "height": "30", "fit": "cover"},
    {"height": "20", "format": "webp", "quality": "70"}, {"model": "srresnet", "strength": "0.7"},
])
def test_both_routes_answer_the_same_image(client, fields):
    response = predict(client, WIDE, **fields)
    _, events = page_events(client, WIDE, **fields)
    result = events[-1]
    assert result["event"] == "result"
    assert base64.b64decode(result["image"]) == response.data
    assert f"{result['width']}x{result['height']}" == response.headers["X-Output-Size"]


def test_the_page_gets_both_layers_and_counts_every_pass_in_its_tiles(client):
    _, events = page_events(client, WIDE, scale="8", strength="0.4")
    start, result = events[0], events[-1]
    progress = [event for event in events if event["event"] == "progress"]
    assert start["total"] == progress[-1]["total"] == progress[-1]["done"] == 2  # one tile per pass here
    model = pixels(base64.b64decode(result["layers"]["model"]))
    lanczos = pixels(base64.b64decode(result["layers"]["lanczos"]))
    assert np.array_equal(model, ok(predict(client, WIDE, scale="8")))
    assert np.array_equal(lanczos, ok(predict(client, WIDE, scale="8", strength="0")))
    assert result["strength"] == 0.4


# --- Metadata -----------------------------------------------------------------------------------


def test_metadata_publishes_every_option_with_its_range_and_default(client):
    published = {entry["name"]: entry for entry in client.get("/model/metadata").json["options"]}
    assert list(published) == [option.name for option in OPTIONS]
    assert published["scale"] | {"help": ""} == {
        "name": "scale", "type": "number", "default": 4, "minimum": 1, "maximum": 8, "help": "",
        "allowed": "a number from 1 to 8"}
    assert (published["strength"]["minimum"], published["strength"]["maximum"], published["strength"]["default"]) == (0, 1, 1)
    assert published["fit"]["choices"] == ["contain", "cover", "fill"] and published["fit"]["default"] == "contain"
    assert published["format"]["aliases"] == {"jpg": "jpeg"}
    assert published["model"]["choices"] == ["srgan", "srresnet"] and published["model"]["default"] == "srgan"
    assert published["model"]["choices_by_model"] == {"srgan": ["srgan", "srresnet"], "srresnet": ["srgan", "srresnet"]}
    assert published["ensemble"]["type"] == "boolean" and published["ensemble"]["default"] is False
