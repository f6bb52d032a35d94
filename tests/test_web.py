"""The web page end to end: real Chromium (Debian's package) driving the page served by a real gunicorn."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from core import images
from harness.live_server import live_server
from tests.conftest import SAMPLES, sample_bytes
from tests.core.test_images import png16

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
# A test run leaves the tree as it was: the screenshot goes to the test's temporary folder unless
# `make docs-pictures` asks for docs/web-page.png through WEB_SCREENSHOT.
SCREENSHOT_ENV = "WEB_SCREENSHOT"
# Small tiles, one per batch and no queue: a small image still shows several progress steps,
# and a request arriving while the slot is taken gets 503 at once, which shows whether work still runs.
SERVER_SETTINGS = {"tile_size": 64, "tile_batch": 1, "queue_size": 0}
# The model with denoise levels, which differ by native scale. Its fifteen networks take minutes to load on a
# busy machine, so only the denoise test waits for them, with time to spare.
DENOISE_SETTINGS = {"models": "srgan,realcugan"}
DENOISE_START_TIMEOUT_S = 900
# Collects every text the progress line shows, so the test can see it move.
RECORD_PROGRESS = """() => {
  window.progressTexts = [];
  const target = document.getElementById("progress-text");
  new MutationObserver(() => window.progressTexts.push(target.textContent))
    .observe(target, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def server():
    with live_server(**SERVER_SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def denoise_server():
    with live_server(start_timeout_s=DENOISE_START_TIMEOUT_S, **DENOISE_SETTINGS) as running:
        yield running


@contextmanager
def open_page(browser, url: str) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 820}, device_scale_factor=1,
                                  accept_downloads=True)
    opened = context.new_page()
    opened.goto(f"{url}/app/")
    # A selector, not a JavaScript string: the page's policy forbids eval, which a string predicate needs.
    opened.wait_for_selector("#model option", state="attached")
    yield opened
    context.close()


@pytest.fixture()
def page(browser, server):
    with open_page(browser, server.url) as opened:
        yield opened


def sizes_answered(page) -> None:
    """Until the page shows the server's answer on the sizes of its current choices (GET /app/sizes)."""
    page.wait_for_selector("#warnings[aria-busy=false]", state="attached")


def test_page_upscales_shows_progress_compares_and_downloads(page, tmp_path):
    page.set_input_files("#file", str(SAMPLES / "astronaut.png"))
    page.wait_for_selector("body[data-state=ready]")
    sizes_answered(page)
    assert page.text_content("#input-size").startswith("128 × 128 px")
    assert page.text_content("#output-size").startswith("512 × 512 px")
    assert page.input_value("#model") == "srgan"
    assert page.text_content("#warnings") == ""

    page.evaluate(RECORD_PROGRESS)
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=180_000)

    shown = page.evaluate("window.progressTexts")
    assert "0 of 4 tiles" in shown, shown
    assert any(re.fullmatch(r"[123] of 4 tiles", text) for text in shown), f"progress never moved: {shown}"
    assert page.evaluate("[document.getElementById('after').width, document.getElementById('after').height]") == [512, 512]
    assert page.is_visible("#stage") and page.is_visible("#before")

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == "astronaut_srgan_x4.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (512, 512)

    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web-page.png")
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 0


def canvas_pixels(page) -> np.ndarray:
    """The after view's pixels as the page shows them (RGBA)."""
    width, height, data = page.evaluate("""() => {
      const canvas = document.getElementById('after');
      return [canvas.width, canvas.height,
              Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data)];
    }""")
    return np.array(data, np.int32).reshape(height, width, 4)


def api_answer(url: str, data: bytes, **fields) -> bytes:
    response = requests.post(f"{url}/model/predict", data=fields, files={"image": ("in.png", data, "image/png")},
                             timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def levels(data: bytes) -> np.ndarray:
    """Every level, alpha last (16-bit colour too, which Pillow alone would cut to 8 bits)."""
    decoded = images.decode(data, 10**8)
    channels = [decoded.colour] if decoded.alpha is None else [decoded.colour, decoded.alpha[..., None]]
    return np.concatenate(channels, axis=-1).astype(np.int32)


@pytest.mark.parametrize("mode, value, fields, image", [
    ("scale", "2.5", {"scale": "2.5"}, "rgb"),
    ("width", "100", {"width": "100"}, "rgba"),
    ("height", "75", {"height": "75"}, "rgb16"),
])
def test_strength_slider_shows_at_once_and_downloads_what_the_api_answers(page, server, tmp_path, mode, value,
                                                                          fields, image):
    source = tmp_path / "small.png"
    with Image.open(SAMPLES / "chelsea.png") as photo:
        small = photo.crop((30, 20, 70, 50))  # 40 x 30
        if image == "rgba":
            small = small.convert("RGBA")
            small.putalpha(Image.linear_gradient("L").resize((40, 30)))
    if image == "rgb16":  # 16-bit levels whose low bytes matter: an 8-bit path would show at once
        source.write_bytes(png16(np.asarray(small, np.uint16) * 257 + np.arange(40, dtype=np.uint16)[None, :, None]))
    else:
        small.save(source)
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", mode)
    page.fill("#size-value", value)
    sizes_answered(page)
    assert page.text_content("#output-size").startswith("100 × 75 px")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=180_000)
    assert page.get_attribute("#download", "data-strength") == "1"
    model_view = canvas_pixels(page)

    requests_made = []
    page.on("request", lambda request: requests_made.append(request.url))
    page.fill("#strength", "0.3")
    assert page.text_content("#strength-value") == "0.30"
    blended_view = canvas_pixels(page)  # already redrawn: the input handler draws before it returns
    assert np.abs(blended_view[..., :3] - model_view[..., :3]).mean() > 1, "the view did not change"
    page.wait_for_selector("#download[data-strength='0.3']", state="attached")
    assert not [url for url in requests_made if "/app/upscale" in url or "/model/" in url], requests_made

    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.name == f"small_srgan_{ {'scale': 'x2.5', 'width': 'w100', 'height': 'h75'}[mode] }_s0.3.png".replace(" ", "")
    answer = api_answer(server.url, source.read_bytes(), strength="0.3", **fields)
    downloaded, expected = levels(saved.read_bytes()), levels(answer)
    assert downloaded.shape == expected.shape == ((75, 100, 4) if image == "rgba" else (75, 100, 3))
    assert downloaded.max() > 255 if image == "rgb16" else downloaded.max() <= 255
    assert np.abs(downloaded - expected).max() <= 1, "the download is not the API's answer within one level"

    # Back at the strength the server ran with, the download is the server's own answer.
    page.fill("#strength", "1")
    page.wait_for_selector("#download[data-strength='1']", state="attached")
    with page.expect_download() as download_info:
        page.click("#download")
    download_info.value.save_as(tmp_path / "full.png")
    assert (tmp_path / "full.png").read_bytes() == api_answer(server.url, source.read_bytes(), **fields)


def test_strength_with_jpeg_downloads_the_browsers_encoding_of_the_blend(page, server, tmp_path):
    source = tmp_path / "photo.png"
    with Image.open(SAMPLES / "chelsea.png") as photo:
        photo.crop((30, 20, 70, 50)).save(source)
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#format", "jpeg")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=180_000)
    page.fill("#strength", "0.5")
    page.wait_for_selector("#download[data-strength='0.5']", state="attached")
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.name == "photo_srgan_x4_s0.5.jpg"
    with Image.open(saved) as downloaded:
        assert downloaded.format == "JPEG" and downloaded.size == (160, 120)
    answer = levels(api_answer(server.url, source.read_bytes(), strength="0.5", format="jpeg"))
    # Two JPEG encoders of one picture at quality 90: close, not identical (docs/web-and-cli.md says so).
    assert np.abs(levels(saved.read_bytes()) - answer).mean() < 3


def small_photo(path: Path) -> Path:
    """A 40 x 30 crop of the sample photo: quick for any model."""
    with Image.open(SAMPLES / "chelsea.png") as photo:
        photo.crop((30, 20, 70, 50)).save(path)
    return path


def upscale_and_download(page, source: Path, folder: Path) -> Path:
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=180_000)
    with page.expect_download() as download_info:
        page.click("#download")
    saved = folder / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    return saved


@pytest.mark.parametrize("width, height, fit, output, name", [
    ("100", "100", "contain", (100, 75), "small_srgan_w100h100.png"),
    ("100", "100", "cover", (100, 100), "small_srgan_w100h100_cover.png"),
    ("90", "100", "fill", (90, 100), "small_srgan_w90h100_fill.png"),
])
def test_width_and_height_with_fit_download_what_the_api_answers(page, server, tmp_path, width, height, fit, output,
                                                                 name):
    source = small_photo(tmp_path / "small.png")
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    assert page.is_hidden("#fit-field")  # fit applies to both sides only; the server refuses it otherwise
    page.select_option("#size-mode", "box")
    assert page.is_visible("#fit-field") and page.is_visible("#box-height-field")
    assert page.input_value("#fit") == "contain"  # the schema's default
    page.fill("#size-value", width)
    page.fill("#box-height", height)
    page.select_option("#fit", fit)
    sizes_answered(page)
    assert page.text_content("#output-size").startswith(f"{output[0]} × {output[1]} px")

    saved = upscale_and_download(page, source, tmp_path)
    assert saved.name == name
    assert saved.read_bytes() == api_answer(server.url, source.read_bytes(), width=width, height=height, fit=fit)

    # The strength blend of the cropped or stretched layers, as the server blends them.
    page.fill("#strength", "0.4")
    page.wait_for_selector("#download[data-strength='0.4']", state="attached")
    with page.expect_download() as download_info:
        page.click("#download")
    assert download_info.value.suggested_filename == name.replace(".png", "_s0.4.png")
    blended = tmp_path / "blended.png"
    download_info.value.save_as(blended)
    expected = levels(api_answer(server.url, source.read_bytes(), width=width, height=height, fit=fit, strength="0.4"))
    assert np.abs(levels(blended.read_bytes()) - expected).max() <= 1


def test_denoise_is_offered_for_a_model_with_levels_at_its_native_scale(browser, denoise_server, tmp_path):
    with open_page(browser, denoise_server.url) as page:
        check_denoise(page, denoise_server.url, tmp_path)


def check_denoise(page, url: str, tmp_path: Path) -> None:
    models = {m["id"]: m for m in requests.get(f"{url}/model/metadata", timeout=10).json()["models"]}
    source = small_photo(tmp_path / "small.png")
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    sizes_answered(page)
    assert page.is_hidden("#denoise-field")  # srgan has no levels
    page.select_option("#model", "realcugan")
    shown = "options => options.map(o => o.value)"
    for preset, native in (("x4", "4"), ("x2", "2")):
        page.select_option("#size-mode", preset)
        sizes_answered(page)
        assert page.is_visible("#denoise-field")
        assert page.eval_on_selector_all("#denoise option", shown) == models["realcugan"]["denoise"][native]

    # A level the 2x network has and the 4x one lacks: the server's answer offers the 4x levels, the page takes the
    # default among them and asks again, and the upscale it checked is one the server runs.
    page.select_option("#denoise", "1")
    sizes_answered(page)
    page.select_option("#size-mode", "x4")
    sizes_answered(page)
    assert page.eval_on_selector_all("#denoise option", shown) == models["realcugan"]["denoise"]["4"]
    assert page.input_value("#denoise") == "none"
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")
    assert page.text_content("#output-size").startswith("160 × 120 px")
    lacking = requests.get(f"{url}/app/sizes", timeout=30, params={
        "input_width": "40", "input_height": "30", "model": "realcugan", "scale": "4", "denoise": "1"}).json()
    refused = requests.post(f"{url}/model/predict", data={"model": "realcugan", "scale": "4", "denoise": "1"},
                            files={"image": ("small.png", source.read_bytes(), "image/png")}, timeout=60)
    assert refused.status_code == 400
    assert lacking == {"width": None, "height": None, "refusal": refused.json()["message"],
                       "denoise_levels": models["realcugan"]["denoise"]["4"]}

    page.select_option("#size-mode", "x2")
    sizes_answered(page)
    page.select_option("#denoise", "3")
    sizes_answered(page)
    saved = upscale_and_download(page, source, tmp_path)
    assert saved.name == "small_realcugan_x2_denoise-3.png"
    answer = api_answer(url, source.read_bytes(), model="realcugan", scale="2", denoise="3")
    assert saved.read_bytes() == answer
    assert answer != api_answer(url, source.read_bytes(), model="realcugan", scale="2")

    page.select_option("#model", "srgan")
    sizes_answered(page)
    assert page.is_hidden("#denoise-field")


def test_page_builds_its_options_from_the_metadata(page, server):
    metadata = requests.get(f"{server.url}/model/metadata", timeout=10).json()
    published = {o["name"]: o for o in metadata["options"]}
    accepted = page.get_attribute("#file", "accept").split(",")
    assert accepted == [kind for entry in metadata["input_formats"]
                        for kind in [entry["content_type"], *entry["suffixes"]]]
    assert {"image/png", "image/tiff", ".tif"} <= set(accepted)
    assert page.get_attribute("#strength", "min") == str(published["strength"]["minimum"])
    assert page.get_attribute("#strength", "max") == str(published["strength"]["maximum"])
    assert page.eval_on_selector_all("#format option", "options => options.map(o => o.value)") == \
        published["format"]["choices"]
    assert page.input_value("#size-mode") == f"x{published['scale']['default']}"
    assert page.eval_on_selector_all("#fit option", "options => options.map(o => o.value)") == \
        published["fit"]["choices"]
    assert page.is_checked("#ensemble") == published["ensemble"]["default"]
    page.select_option("#size-mode", "scale")
    assert page.get_attribute("#size-value", "max") == str(published["scale"]["maximum"])


def test_page_warns_before_running_an_image_over_the_limits(page, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4100, 1000), "grey").save(wide)  # 4.1 MP input, over the 4 MP default
    page.set_input_files("#file", str(wide))
    page.wait_for_selector("#warnings > *")
    warnings = page.text_content("#warnings")
    assert "4,100,000 pixels" in warnings and "4,000,000 input pixels" in warnings
    assert page.is_disabled("#run")


@pytest.mark.parametrize("mode, values, fields", [
    ("scale", ["9"], {"scale": "9"}),
    ("width", ["2.5"], {"width": "2.5"}),
    ("width", ["1000"], {"width": "1000"}),
    ("box", ["1000", "20"], {"width": "1000", "height": "20", "fit": "fill"}),
])
def test_page_refuses_a_size_the_server_refuses_with_its_message(page, server, tmp_path, mode, values, fields):
    source = small_photo(tmp_path / "small.png")
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", mode)
    for selector, value in zip(["#size-value", "#box-height"], values):
        page.fill(selector, value)
    if "fit" in fields:
        page.select_option("#fit", fields["fit"])
    sizes_answered(page)
    warning = page.text_content("#warnings")
    assert page.is_disabled("#run") and page.text_content("#output-size") == "–"
    response = requests.post(f"{server.url}/model/predict", data=fields, timeout=60,
                             files={"image": ("small.png", source.read_bytes(), "image/png")})
    assert response.status_code == 400
    message = response.json()["message"]
    assert warning == message  # the page's warning is the server's answer on the sizes, word for word


def test_the_pages_size_and_refusal_match_the_servers_to_the_pixel_and_the_digit(page, server, tmp_path):
    # In floats 50 x 1.13 is 56.4999..., and 8001 / 1000 to 3 digits is 8, which reads as allowed.
    square, wide = tmp_path / "square.png", tmp_path / "wide.png"
    Image.new("RGB", (50, 50), "grey").save(square)
    Image.new("RGB", (1000, 8), "grey").save(wide)
    page.set_input_files("#file", str(square))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", "scale")
    page.fill("#size-value", "1.13")
    sizes_answered(page)
    answer = requests.post(f"{server.url}/model/predict", data={"scale": "1.13"}, timeout=120,
                           files={"image": ("square.png", square.read_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.headers["X-Output-Size"] == "57x57"
    assert page.text_content("#output-size").startswith("57 × 57 px")
    page.set_input_files("#file", str(wide))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", "width")
    page.fill("#size-value", "8001")
    sizes_answered(page)
    refusal = requests.post(f"{server.url}/model/predict", data={"width": "8001"}, timeout=60,
                            files={"image": ("wide.png", wide.read_bytes(), "image/png")})
    assert refusal.status_code == 400 and "8.001 times" in refusal.json()["message"]
    assert page.text_content("#warnings") == refusal.json()["message"]


def choose_box(page, path, width: str, height: str, fit: str) -> None:
    """The image at ``path`` into width x height with ``fit``; returns once the server's answer on the sizes shows."""
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", "box")
    page.fill("#size-value", width)
    page.fill("#box-height", height)
    page.select_option("#fit", fit)
    sizes_answered(page)


@pytest.mark.parametrize("size, box, fit", [
    # 7997 x 8003 fits 64,000,000 output pixels; the second 4x pass makes 8000 x 8004, which does not.
    ((1001, 1001), ("7997", "8003"), "fill"),
    # cover cuts first, but the part of 2000 x 1000 that an 8000 x 8000 box needs, with the network's margin,
    # comes out of the second pass 8128 x 8000.
    ((2000, 1000), ("8000", "8000"), "cover"),
])
def test_page_warns_of_a_model_pass_over_the_output_limit_as_the_server_refuses_it(page, server, tmp_path, size, box,
                                                                                    fit):
    image = tmp_path / "image.png"
    Image.new("RGB", size, "grey").save(image)
    choose_box(page, image, *box, fit)
    refusal = requests.post(f"{server.url}/model/predict", timeout=60,
                            data={"width": box[0], "height": box[1], "fit": fit},
                            files={"image": ("image.png", image.read_bytes(), "image/png")})
    assert refusal.status_code == 413 and "the model's 4x result" in refusal.json()["message"]
    assert page.text_content("#warnings") == refusal.json()["message"]
    assert page.is_disabled("#run")


def test_page_does_not_warn_of_a_cover_whose_whole_enlargement_alone_is_over_the_limit(page, server, tmp_path):
    """2000 x 1000 covering 7900 x 7900 would be 15800 x 7900 = 124,820,000 pixels enlarged whole; cut first, its
    passes stay within 64,000,000, and the server takes it."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000), "grey").save(wide)
    choose_box(page, wide, "7900", "7900", "cover")
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")
    assert page.text_content("#output-size").startswith("7900 × 7900 px")


def sizes_request(request) -> bool:
    return "/app/sizes?" in request.url


def test_the_run_button_waits_for_the_servers_answer_on_the_sizes(page, tmp_path):
    """Until GET /app/sizes answers for the current choices the page has checked nothing: it shows no size and
    the run button stays disabled; an answer for choices since changed never shows."""
    held = []
    page.route("**/app/sizes?*", lambda route: held.append(route))
    with page.expect_request(sizes_request):
        page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
        page.wait_for_selector("body[data-state=ready]")
    assert page.is_disabled("#run") and page.get_attribute("#warnings", "aria-busy") == "true"
    assert page.text_content("#output-size") == "checking…"
    with page.expect_request(sizes_request):
        page.select_option("#size-mode", "x2")
    assert page.is_disabled("#run") and page.text_content("#output-size") == "checking…"
    assert len(held) == 2 and "scale=4" in held[0].request.url and "scale=2" in held[1].request.url

    with page.expect_event("requestfinished", lambda request: request.url == held[0].request.url):
        held[0].continue_()  # the answer for 4x, come after the question for 2x
    page.evaluate("() => new Promise((resolve) => setTimeout(resolve))")  # after the tasks its answer queued
    assert page.is_disabled("#run") and page.text_content("#output-size") == "checking…"
    held[1].continue_()
    sizes_answered(page)
    assert page.text_content("#output-size").startswith("80 × 60 px") and page.is_enabled("#run")


def test_the_run_button_stays_disabled_when_the_sizes_go_unanswered(page, tmp_path):
    page.route("**/app/sizes?*", lambda route: route.abort())
    page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
    page.wait_for_selector("body[data-state=ready]")
    sizes_answered(page)
    assert page.text_content("#warnings").startswith("Could not ask the server for the output's size")
    assert page.is_disabled("#run") and page.text_content("#output-size") == "–"
    page.unroute("**/app/sizes?*")
    page.select_option("#size-mode", "x2")  # any change asks again
    sizes_answered(page)
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")


def test_page_warns_of_an_empty_size_field_instead_of_sending_zero(page, tmp_path):
    page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#size-mode", "scale")
    page.fill("#size-value", "")
    assert page.text_content("#warnings") == "scale must be a number from 1 to 8, and the field is empty or not a number"
    assert page.is_disabled("#run")


def test_page_warns_before_running_self_ensemble_over_its_limit_as_the_server_refuses_it(page, server, tmp_path):
    limit = requests.get(f"{server.url}/model/metadata", timeout=10).json()["limits"]["max_ensemble_pixels"]
    over = tmp_path / "over.png"
    Image.new("RGB", (limit // 100 + 1, 100), "grey").save(over)
    page.set_input_files("#file", str(over))
    page.wait_for_selector("body[data-state=ready]")
    sizes_answered(page)
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")
    page.check("#ensemble")
    sizes_answered(page)
    refusal = requests.post(f"{server.url}/model/predict", timeout=60, data={"ensemble": "true"},
                            files={"image": ("over.png", over.read_bytes(), "image/png")})
    assert refusal.status_code == 413 and "MAX_ENSEMBLE_PIXELS" in refusal.json()["message"]
    assert page.text_content("#warnings") == refusal.json()["message"]
    assert page.is_disabled("#run")
    page.uncheck("#ensemble")
    sizes_answered(page)
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")


def test_page_does_not_warn_of_the_ensemble_on_a_cover_whose_part_is_within_its_limit(page, server, tmp_path):
    """The ensemble runs on the part of the strip the box needs, within the limit, though the strip is not."""
    limit = requests.get(f"{server.url}/model/metadata", timeout=10).json()["limits"]["max_ensemble_pixels"]
    strip = tmp_path / "strip.png"
    Image.new("RGB", (limit // 100 + 1, 100), "grey").save(strip)
    page.check("#ensemble")
    choose_box(page, strip, "400", "400", "cover")
    assert page.text_content("#warnings") == "" and page.is_enabled("#run")


def test_cancel_stops_the_work_on_the_server(page, server, tmp_path):
    large = tmp_path / "large.png"
    with Image.open(SAMPLES / "astronaut.png") as image:
        image.resize((512, 512), Image.Resampling.BICUBIC).save(large)  # 8 x 8 = 64 tiles of 64 px
    page.set_input_files("#file", str(large))
    page.wait_for_selector("body[data-state=ready]")
    page.click("#run")
    page.wait_for_selector("#progress-text:text-matches('^[1-9]\\\\d* of 64 tiles')", timeout=120_000)
    done_at_cancel = int(page.text_content("#progress-text").split()[0])
    elapsed_at_cancel = float(page.text_content("#elapsed").split()[0])
    page.click("#cancel")
    cancelled_at = time.monotonic()
    page.wait_for_selector("body[data-state=cancelled]", timeout=10_000)
    assert "Cancelled after" in page.text_content("#message")

    free_after = _seconds_until_slot_is_free(server.url, timeout_s=120)
    tile_s = elapsed_at_cancel / done_at_cancel
    remaining_s = (64 - done_at_cancel) * tile_s
    assert free_after < remaining_s / 2, (
        f"the slot was free {free_after:.1f} s after cancel; the rest of the image needed about {remaining_s:.0f} s")
    assert time.monotonic() - cancelled_at < 120


def _seconds_until_slot_is_free(url: str, timeout_s: float) -> float:
    """With no queue, /model/predict answers 503 while any upscale runs in the worker."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        response = requests.post(f"{url}/model/predict", timeout=60,
                                 files={"image": ("rocket.png", sample_bytes("rocket.png"), "image/png")})
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 503, response.text
        time.sleep(0.2)
    raise AssertionError(f"the inference slot was still taken {timeout_s} s after cancel")


def test_ensemble_and_quality_are_in_the_download_name(page, server, tmp_path):
    source = small_photo(tmp_path / "small.png")
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#format", "jpeg")
    page.fill("#quality", "70")
    page.check("#ensemble")
    saved = upscale_and_download(page, source, tmp_path)
    assert saved.name == "small_srgan_x4_ensemble_q70.jpg"
    assert saved.read_bytes() == api_answer(server.url, source.read_bytes(), format="jpeg", quality="70",
                                            ensemble="true")


def test_the_file_chooser_and_every_control_are_reached_with_the_keyboard_and_named(page, tmp_path):
    page.keyboard.press("Tab")  # the link to the API docs
    page.keyboard.press("Tab")
    # Focused, a file input opens its chooser on Space or Enter (the browser's own behaviour; headless Chromium
    # does not always report that chooser to the test, so the file is then given to the focused input).
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.evaluate("getComputedStyle(document.activeElement).display") != "none"
    page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
    page.wait_for_selector("body[data-state=ready]")
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, a')]
      .filter((control) => !control.labels?.length && !control.getAttribute('aria-label')
                           && !control.textContent.trim())
      .map((control) => control.id || control.outerHTML)""")
    assert unnamed == []


BUSY = "the server is busy: 1 of 1 images running and 0 queued (queue size 0); retry later"
# The two ways a 503 reaches the page, as tests/api/test_backpressure.py checks the server sends them: refused
# before the stream (Retry-After), or ending a stream that had begun (retry_after_s).
BUSY_ANSWERS = {
    "refused": {"status": 503, "headers": {"Retry-After": "7"}, "content_type": "application/json",
                "body": json.dumps({"message": BUSY})},
    "stream": {"status": 200, "content_type": "application/x-ndjson", "body": "".join(json.dumps(event) + "\n" for event in [
        {"event": "start", "done": 0, "total": 4, "elapsed_s": 0.0},
        {"event": "error", "status": 503, "message": BUSY, "retry_after_s": 7}])},
}


@pytest.mark.parametrize("answer", BUSY_ANSWERS)
def test_a_503_shows_the_message_and_when_to_try_again(page, tmp_path, answer):
    page.route("**/app/upscale", lambda route: route.fulfill(**BUSY_ANSWERS[answer]))
    page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
    page.wait_for_selector("body[data-state=ready]")
    page.click("#run")
    page.wait_for_selector("body[data-state=error]")
    assert page.text_content("#message") == f"{BUSY} (the server asks to try again in 7 s)"
    assert page.is_enabled("#run")


def test_cancel_before_the_upscale_starts_says_so_and_no_other_image_is_taken_meanwhile(page, tmp_path):
    page.route("**/app/upscale", lambda route: None)  # no answer: the upload is still in flight
    page.set_input_files("#file", str(small_photo(tmp_path / "small.png")))
    page.wait_for_selector("body[data-state=ready]")
    page.click("#run")
    # Another image now would become the "before" of this one's result: the chooser and the drop wait.
    assert page.is_disabled("#file")
    page.dispatch_event("#drop", "drop", {"dataTransfer": page.evaluate_handle("""() => {
      const transfer = new DataTransfer();
      transfer.items.add(new File(["x"], "other.png", {type: "image/png"}));
      return transfer;
    }""")})
    assert "small.png" in page.text_content("#drop-text")
    page.click("#cancel")
    page.wait_for_selector("body[data-state=cancelled]")
    assert page.text_content("#message") == "Cancelled before the upscale started."
    assert page.is_enabled("#file")


def test_web_page_is_linked_from_the_api_docs_but_not_in_swagger(server):
    swagger = requests.get(f"{server.url}/swagger.json", timeout=10).json()
    assert "/app/" in swagger["info"]["description"]
    assert not any(path.startswith("/app") for path in swagger["paths"])
    assert requests.get(f"{server.url}/app/app.js", timeout=10).status_code == 200


def test_swagger_ui_try_it_out_with_only_an_image_upscales_it(browser, server, tmp_path):
    """Under its content security policy, and with the form as Swagger UI fills it: whatever it sends for
    the options it leaves alone must be a request the server accepts."""
    upload = tmp_path / "small.png"
    Image.new("RGB", (16, 12), (200, 80, 40)).save(upload)
    context = browser.new_context()
    swagger = context.new_page()
    refused: list[str] = []
    swagger.on("console", lambda message: refused.append(message.text)
               if "Content Security Policy" in message.text else None)
    response = swagger.goto(f"{server.url}/")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    swagger.wait_for_selector(".swagger-ui .opblock-tag", timeout=30_000)
    if not swagger.is_visible(".opblock-summary-path[data-path=\"/model/predict\"]"):
        swagger.click(".opblock-tag")  # the model namespace opens
    swagger.click(".opblock-summary-path[data-path=\"/model/predict\"]")
    swagger.click("text=Try it out")
    swagger.set_input_files("input[type=file]", str(upload))
    with swagger.expect_response(lambda answer: "/model/predict" in answer.url, timeout=120_000) as predicted:
        swagger.click("button.execute")
    answer = predicted.value
    assert answer.status == 200, answer.text()
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-output-size"] == "64x48"  # the default scale, 4
    # Swagger UI shows the answer as an image: it decodes to that size.
    shown = swagger.locator(".live-responses-table img").evaluate(
        "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
    assert shown == [64, 48]
    context.close()
    assert refused == []
