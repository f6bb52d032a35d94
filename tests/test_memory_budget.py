"""A real gunicorn worker under a tight MEMORY_BUDGET_MB: its tiles shrink so that its peak RSS stays within it;
and a request's peak stays within what its plan reserves, for the largest pixels and the page's layers."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from config import MEBIBYTE
from harness.live_server import live_server
from harness.photos import photo_png, photo_profiled_tiff
from harness.process import gunicorn_worker, peak_rss_mb
from harness.raw_http import gauge, wait_for
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
# srgan alone is resident in about 0.7 GiB; this leaves its windows a few hundred MiB.
BUDGET_MB = 1024


def test_worker_peak_stays_within_a_tight_budget():
    with live_server(models="srgan", memory_budget_mb=BUDGET_MB, workers=1) as server:
        worker = gunicorn_worker(server.process.pid)
        answer = requests.post(f"{server.url}/model/predict", timeout=600,
                               files={"image": ("photo.png", photo_png(500), "image/png")})
        assert answer.status_code == 200
        assert answer.headers["X-Output-Size"] == "2000x2000"
        assert peak_rss_mb(worker) <= BUDGET_MB


def test_an_image_the_budget_cannot_hold_is_a_413_naming_the_setting():
    with live_server(models="srgan", memory_budget_mb=760, workers=1) as server:
        answer = requests.post(f"{server.url}/model/predict", timeout=600,
                               files={"image": ("photo.png", photo_png(1500), "image/png")})
        assert answer.status_code == 413
        assert "MEMORY_BUDGET_MB=760" in answer.json()["message"]


@pytest.mark.parametrize("picture, side, strength, route", [
    ("photo16-rgba", "400", "0.5", "/model/predict"), ("photo16-rgba", "400", "1", "/app/upscale"),
    ("photo16-rgba-tiff", "400", "0.5", "/model/predict"),
    ("photo-profiled", "64", "1", "/model/predict"), ("photo-profiled", "64", "1", "/app/upscale"),
    ("photo-texted", "64", "1", "/model/predict"), ("photo-chunked", "64", "1", "/model/predict"),
    ("photo-tagged-tiff", "64", "1", "/model/predict"), ("photo-commented-gif", "64", "1", "/model/predict"),
    ("photo-segmented", "64", "1", "/model/predict"), ("photo-annotated-webp", "64", "1", "/model/predict")])
def test_a_request_stays_within_what_its_plan_reserves(picture, side, strength, route):
    """16-bit RGBA that deflate cannot shrink (as PNG, and as a TIFF read through a copy of the file), mixed with
    Lanczos or answered with the page's layers, and a 64²
    TIFF whose 30 MiB ICC profile every encoded image carries (its peak was 91 and 335 MiB where its plan reserved
    27 and 29), and a 64² PNG with 60 MiB of text (zTXt), which the decoder held (a peak of 50 MiB where 27 were
    reserved), and 64² photos with 30 MiB of other metadata, which decoders held or copied (docs/inputs.md,
    "Metadata"): a PNG's private and EXIF chunks, a TIFF's XMP tag, a GIF's comment (peaks of 93, 60 and 63 MiB
    where 57, 57 and 58 were reserved), a JPEG's application segments and a WebP's EXIF and XMP chunks (measurable
    since the heap's thresholds are pinned: no freed buffer of 1 MiB or more stays for their copies to reuse
    unseen, ``memory.pin_heap_thresholds``): the
    peak above the loaded process (a fresh one) is within ``Plan.host_bytes``, which the inference slots hold."""
    done = subprocess.run([sys.executable, "-m", "harness.memory_probe", "reserve", picture, side, strength, route],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < measured["peak_above_mb"] <= measured["reserved_mb"]


def rss_mb(pid: int) -> float:
    """A process's resident set now (VmRSS), in MiB."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def test_requests_waiting_in_the_queue_hold_no_copy_of_their_uploads():
    """QUEUE_SIZE requests with uploads of MAX_UPLOAD_BYTES (TIFFs whose ICC profile is nearly all of it, the most a
    header read holds) wait for a slot that an image holds for ever: their uploads wait in their spool files, and
    what their header reads freed has left the worker (``memory.pin_heap_thresholds``), so its RSS has grown by less
    than one upload since they came. Each used to hold its upload in memory, and the freed profile copies of its
    header read: 187 MiB above the loaded worker for two 31 MiB uploads; then, with glibc's sliding thresholds, the
    threads' arenas kept those copies: 33 to 61 MiB on a 2-core AMD EPYC, 120 in CI."""
    queue, upload = 2, photo_profiled_tiff(64, 31 * MEBIBYTE)
    with ThreadPoolExecutor(queue) as pool, live_server(served="tests.slot_taken:app", models="srgan", workers=1,
                                                        queue_size=queue, max_upload_bytes=32 * MEBIBYTE) as server:
        worker = gunicorn_worker(server.process.pid)
        before = rss_mb(worker)
        for _ in range(queue):
            pool.submit(requests.post, f"{server.url}/model/predict", files={"image": ("photo.tiff", upload)},
                        timeout=600)
        wait_for(lambda: gauge(server.url, "superres_inference_queued") == queue, 120)
        assert rss_mb(worker) - before < len(upload) / MEBIBYTE


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_realcugan_request_reserves_its_whole_image_averages_window(scale):
    """Real-CUGAN measures a whole image's averages in 256-px windows (284 px as its 3x networks run them) before
    its tiles, whatever the tile: with 24-px tiles (92 px as run) its plan counted the tiles' windows alone, and a
    fresh process's peak went past what it reserved. It now counts the larger of the two windows, at the figure of
    the native scale that runs (the 3x networks' figure counted for all of them before)."""
    done = subprocess.run([sys.executable, "-m", "harness.memory_probe", "reserve-averages", str(scale), "24", "256"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert (measured["tile"], measured["averages_window"]) == (24, 256)
    assert 0 < measured["peak_above_mb"] <= measured["reserved_mb"]
