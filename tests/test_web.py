"""The web page end to end: real Chromium (Debian's package) driving the page served by a real gunicorn."""
from __future__ import annotations

import re
import shutil
import os
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import SAMPLES, sample_bytes
from tests.live_server import live_server

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
# A test run leaves the tree as it was: the screenshot goes to the test's temporary folder unless
# `make docs-pictures` asks for docs/web-page.png through WEB_SCREENSHOT.
SCREENSHOT_ENV = "WEB_SCREENSHOT"
# Small tiles, one per batch and no queue: a small image still shows several progress steps,
# and a request arriving while the slot is taken gets 503 at once, which shows whether work still runs.
SERVER_SETTINGS = {"tile_size": 64, "tile_batch": 1, "queue_size": 0}
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


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 820}, device_scale_factor=1,
                                  accept_downloads=True)
    opened = context.new_page()
    opened.goto(f"{server.url}/app/")
    # A selector, not a JavaScript string: the page's policy forbids eval, which a string predicate needs.
    opened.wait_for_selector("#model option", state="attached")
    yield opened
    context.close()


def test_page_upscales_shows_progress_compares_and_downloads(page, tmp_path):
    page.set_input_files("#file", str(SAMPLES / "astronaut.png"))
    page.wait_for_selector("body[data-state=ready]")
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
    assert page.evaluate("[document.getElementById('after').naturalWidth, document.getElementById('after').naturalHeight]") == [512, 512]
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


def test_page_warns_before_running_an_image_over_the_limits(page, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4100, 1000), "grey").save(wide)  # 4.1 MP input, over the 4 MP default
    page.set_input_files("#file", str(wide))
    page.wait_for_selector("#warnings > *")
    warnings = page.text_content("#warnings")
    assert "4,100,000 pixels" in warnings and "4,000,000 input pixels" in warnings
    assert page.is_disabled("#run")


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


def test_web_page_is_linked_from_the_api_docs_but_not_in_swagger(server):
    swagger = requests.get(f"{server.url}/swagger.json", timeout=10).json()
    assert "/app/" in swagger["info"]["description"]
    assert not any(path.startswith("/app") for path in swagger["paths"])
    assert requests.get(f"{server.url}/app/app.js", timeout=10).status_code == 200


def test_the_swagger_ui_works_under_its_content_security_policy(browser, server):
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
    swagger.wait_for_selector("text=Try it out")
    context.close()
    assert refused == []
