"""Slow clients and hostile inputs against a real server on loopback, then a report (docs/load.md).

    python -m bench.hostile --report docs/load.md

Slow clients: 20 connections that start a request line and send nothing more, 20 that announce a 100 kB
upload and send 10 bytes, and 10 that post an image and never read the answer. Then /health is probed once a
second and a normal client posts a small image, retrying on 503 as told. Run twice: against gunicorn alone
and against the deployed service (serve.py: nginx in front of gunicorn), both with the default settings.

Hostile inputs: each of the cases below is posted to the deployed service with its default models, one after
another, with the answer's status, its time and the worker's CPU seconds spent on it. Finally 22,000 requests
with made-up HTTP methods, and how much /metrics grew.
"""
from __future__ import annotations

import argparse
import gzip
import io
import math
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from bench.machine import ceiling_in_fresh_process, cpu_description
from bench.report import markers, write_section
from config import Settings
from harness.live_server import LiveServer, live_server
from harness.raw_http import (closed_by_server, cpu_seconds, descendants, open_idle, open_non_reader, open_slow_body,
                              png, rss_bytes, scan_bomb)

REPORT_NAME = "hostile-report"
LIVENESS_S = 1.0
PROBES = 20
STALL_WATCH_S = 60  # how long the report watches whether the server closes the stalled connections


@dataclass(frozen=True)
class SlowClientRun:
    server: str
    health_within_1s: int
    health_median_s: float
    health_max_s: float
    predict_status: str
    predict_s: float
    stalled_closed_after_s: float | None  # None: still open at the end of the watch


@dataclass(frozen=True)
class HostileCase:
    name: str
    upload_bytes: int
    send: Callable[[str], requests.Response]


@dataclass(frozen=True)
class HostileOutcome:
    case: HostileCase
    status: int
    seconds: float
    cpu_seconds: float
    message: str


def slow_clients(server: LiveServer, label: str) -> SlowClientRun:
    answer = png(96, 96, seed=3)
    clients = ([open_idle(server.url) for _ in range(20)] + [open_slow_body(server.url) for _ in range(20)]
               + [open_non_reader(server.url, answer) for _ in range(10)])
    opened = time.monotonic()
    try:
        latencies = [_health_seconds(server.url) for _ in range(PROBES)]
        answered = [s for s in latencies if s is not None]
        status, predict_s = _normal_predict(server.url)
        closed_after = _watch_until_closed(clients[:40], opened)
    finally:
        for client in clients:
            client.close()
    return SlowClientRun(label, sum(s <= LIVENESS_S for s in answered),
                         statistics.median(answered) if answered else float("nan"),
                         max(answered) if answered else float("nan"), status, predict_s, closed_after)


def _health_seconds(url: str) -> float | None:
    started = time.monotonic()
    try:
        ok = requests.get(f"{url}/health", timeout=2 * LIVENESS_S).status_code == 200
    except requests.RequestException:
        ok = False
    elapsed = time.monotonic() - started
    time.sleep(max(0.0, 1.0 - elapsed))
    return elapsed if ok else None


def _normal_predict(url: str, give_up_s: float = 120) -> tuple[str, float]:
    """A 48² predict, retried after each 503 as the answer says, until served or ``give_up_s`` has passed."""
    started = time.monotonic()
    while time.monotonic() - started < give_up_s:
        try:
            response = requests.post(f"{url}/model/predict", files={"image": ("small.png", png(48, 48))},
                                     timeout=give_up_s - (time.monotonic() - started))
        except requests.RequestException as error:
            return type(error).__name__, time.monotonic() - started
        if response.status_code != 503:
            return str(response.status_code), time.monotonic() - started
        time.sleep(float(response.headers.get("Retry-After", 1)))
    return "gave up", time.monotonic() - started


def _watch_until_closed(clients: list, opened: float) -> float | None:
    while time.monotonic() - opened < STALL_WATCH_S:
        if all(closed_by_server(client) for client in clients):
            return time.monotonic() - opened
        time.sleep(0.5)
    return None


def hostile_cases() -> list[HostileCase]:
    bomb = scan_bomb(2000, 2000, 100_000)
    line = _png(np.zeros((1, 4_000_000, 3), np.uint8))
    flat_2000 = _png(np.full((2000, 2000, 3), 128, np.uint8))
    small = png(64, 64)
    return [
        HostileCase("progressive JPEG 2000², 100 k empty scans", len(bomb), lambda url: _post(url, bomb, "b.jpg")),
        HostileCase("PNG of 1 × 4,000,000 pixels", len(line), lambda url: _post(url, line, "line.png")),
        HostileCase("2000² PNG with ensemble=true", len(flat_2000),
                    lambda url: _post(url, flat_2000, "flat.png", ensemble="true")),
        HostileCase("2000² PNG with model=realesrgan", len(flat_2000),
                    lambda url: _post(url, flat_2000, "flat.png", model="realesrgan")),
        HostileCase("gzip-encoded upload", len(small), lambda url: _gzip_post(url, small)),
        HostileCase("an image with 1,500 other form fields", len(small) + 1500 * 60,
                    lambda url: _post(url, small, "s.png", **{f"f{i}": "x" for i in range(1500)})),
        HostileCase("unknown route", 0, lambda url: requests.get(f"{url}/admin.php", timeout=60)),
    ]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def _post(url: str, image: bytes, filename: str, **fields: str) -> requests.Response:
    return requests.post(f"{url}/model/predict", data=fields, files={"image": (filename, image)}, timeout=900)


def _gzip_post(url: str, image: bytes) -> requests.Response:
    prepared = requests.Request("POST", f"{url}/model/predict", files={"image": ("g.png", image)}).prepare()
    prepared.body = gzip.compress(prepared.body)
    prepared.headers["Content-Encoding"] = "gzip"
    prepared.headers["Content-Length"] = str(len(prepared.body))
    return requests.Session().send(prepared, timeout=60)


def run_hostile(server: LiveServer) -> list[HostileOutcome]:
    worker = max(descendants(server.process.pid), key=rss_bytes)  # the models make it the largest process
    outcomes = []
    for case in hostile_cases():
        cpu_before, started = cpu_seconds(worker), time.monotonic()
        response = case.send(server.url)
        seconds = time.monotonic() - started
        outcomes.append(HostileOutcome(case, response.status_code, seconds, cpu_seconds(worker) - cpu_before,
                                       _message(response)))
    return outcomes


def _seconds(value: float) -> str:
    """Seconds for the report; a dash where no probe was answered."""
    return "—" if math.isnan(value) else f"{value:.3f}"


def _message(response: requests.Response) -> str:
    if response.ok:
        return "(the upscaled image)"
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return f"(not JSON: {response.headers.get('Content-Type')})"


def made_up_methods(server: LiveServer, count: int) -> tuple[int, int, float]:
    """/metrics bytes before and after ``count`` requests with random upper-case methods, and their seconds."""
    before = len(requests.get(f"{server.url}/metrics", timeout=30).content)
    rng = random.Random(0)
    session = requests.Session()
    started = time.monotonic()
    for _ in range(count):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 20)))
        session.request(method, f"{server.url}/health", timeout=30)
    seconds = time.monotonic() - started
    return before, len(requests.get(f"{server.url}/metrics", timeout=30).content), seconds


def report(machine: str, slow: list[SlowClientRun], hostile: list[HostileOutcome],
           methods: tuple[int, int, float], count: int) -> str:
    defaults = Settings()
    lines = [f"Machine: {machine}. Defaults: THREADS={defaults.threads_for('cpu')}, QUEUE_SIZE={defaults.queue_size}, "
             f"CLIENT_TIMEOUT_S={defaults.client_timeout_s:g}; command: `python -m bench.hostile`.", "",
             f"**50 slow clients** (20 idle after `GET /hea`, 20 sending a body 10 bytes in, 10 never reading a "
             f"192² answer), then {PROBES} /health probes a second apart and one normal 48² predict:", "",
             "| server | /health within 1 s | median s | max s | normal predict | its s | stalled clients closed |",
             "|---|---:|---:|---:|---|---:|---|"]
    for run in slow:
        closed = f"after {run.stalled_closed_after_s:.0f} s" if run.stalled_closed_after_s is not None \
            else f"still open after {STALL_WATCH_S} s"
        lines.append(f"| {run.server} | {run.health_within_1s} of {PROBES} | {_seconds(run.health_median_s)} | "
                     f"{_seconds(run.health_max_s)} | {run.predict_status} | {run.predict_s:.2f} | {closed} |")
    lines += ["", "**Hostile inputs**, the deployed service with the default models, one at a time:", "",
              "| input | bytes sent | status | answered in s | worker CPU s | message |", "|---|---:|---:|---:|---:|---|"]
    for outcome in hostile:
        message = outcome.message if len(outcome.message) <= 160 else outcome.message[:157] + "..."
        lines.append(f"| {outcome.case.name} | {outcome.case.upload_bytes:,} | {outcome.status} | "
                     f"{outcome.seconds:.2f} | {outcome.cpu_seconds:.2f} | {message} |")
    before, after, seconds = methods
    lines += ["", f"**Made-up HTTP methods**: {count:,} requests with random upper-case methods in {seconds:.0f} s; "
              f"/metrics went from {before:,} to {after:,} bytes."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=int, default=22_000, help="requests with made-up HTTP methods")
    parser.add_argument("--report", type=Path, help="write the report into this file, between its "
                        f"{' and '.join(markers(REPORT_NAME))} markers if it has them")
    args = parser.parse_args(argv)
    machine = f"{cpu_description()}; fp32 ceiling {ceiling_in_fresh_process():.0f} GFLOP/s"
    print(machine, flush=True)
    slow = []
    for label, front in (("gunicorn alone", False), ("deployed (nginx in front)", True)):
        with live_server(front=front) as server:
            slow.append(slow_clients(server, label))
            print(slow[-1], flush=True)
    with live_server(front=True, MODELS=Settings().models) as server:
        hostile = run_hostile(server)
        for outcome in hostile:
            print(outcome.case.name, outcome.status, f"{outcome.seconds:.2f}", outcome.message, flush=True)
        methods = made_up_methods(server, args.methods)
    text = report(machine, slow, hostile, methods, args.methods)
    print(text)
    if args.report:
        write_section(REPORT_NAME, text, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
