"""Bounded load test on loopback: N clients for a fixed time against a real gunicorn, then a report.

    python -m bench.load                       # starts gunicorn itself (1 worker), 8 clients, 120 s
    python -m bench.load --url http://127.0.0.1:5000 --master-pid 1234   # a running server

Each client posts images of mixed sizes (the assets samples and generated 64..256 px images) one after
another; on a 503 it waits the Retry-After the server sent, as a well-behaved client does. Every few
seconds the resident memory of each gunicorn worker is read from /proc. The report gives the status
counts, latency percentiles, throughput and the workers' memory in minute 1 and minute 2, and the run
fails (exit status 1) on any 5xx other than a deliberate 503 or on a connection error.
It stops by itself: no request starts after the duration and every request has a timeout.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.machine import ceiling_in_fresh_process, cpu_description
from bench.report import markers, write_section
from config import MEBIBYTE, Settings
from harness.live_server import live_server
from harness.raw_http import png, rss_bytes, worker_pids

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "test_examples" / "low_resolution"
GENERATED_SIZES = ((64, 64), (96, 96), (128, 128), (160, 120), (192, 192), (224, 160), (256, 256), (256, 144))
REQUEST_TIMEOUT_S = 180
REPORT_NAME = "load-report"


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    pixels: int


@dataclass(frozen=True)
class Outcome:
    upload: Upload
    status: str  # "200", "503 busy", "ConnectionError", ...
    seconds: float


@dataclass(frozen=True)
class MemorySample:
    at_s: float
    rss_by_worker: dict[int, int]


def uploads() -> list[Upload]:
    from PIL import Image

    chosen = []
    for path in sorted(SAMPLES.glob("*.png")):
        with Image.open(path) as image:
            chosen.append(Upload(path.name, path.read_bytes(), image.width * image.height))
    for seed, (width, height) in enumerate(GENERATED_SIZES):
        chosen.append(Upload(f"generated-{width}x{height}.png", png(width, height, seed), width * height))
    return chosen


def describe_status(response: requests.Response) -> str:
    if response.status_code != 503:
        return str(response.status_code)
    message = response.json().get("message", "")
    kind = "busy" if "busy" in message else "time limit" if "time limit" in message else "not ready" if "not ready" in message else "other"
    return f"503 {kind}"


def run_client(url: str, choices: list[Upload], seed: int, deadline: float, outcomes: list[Outcome]) -> None:
    rng = random.Random(seed)
    with requests.Session() as session:
        while time.monotonic() < deadline:
            upload = rng.choice(choices)
            started = time.monotonic()
            retry_after = 0.0
            try:
                response = session.post(f"{url}/model/predict", files={"image": (upload.name, upload.data, "image/png")},
                                        timeout=REQUEST_TIMEOUT_S)
                status = describe_status(response)
                if response.status_code == 503:
                    retry_after = float(response.headers.get("Retry-After", 1))
            except requests.RequestException as error:
                status = type(error).__name__
                retry_after = 1.0
            outcomes.append(Outcome(upload, status, time.monotonic() - started))
            time.sleep(max(0.0, min(retry_after, deadline - time.monotonic())))


def sample_memory(master_pid: int, t0: float, every_s: float, stop: threading.Event, samples: list[MemorySample]) -> None:
    while not stop.is_set():
        rss = {}
        for pid in worker_pids(master_pid):
            with contextlib.suppress(OSError, ValueError):  # a worker that just ended
                rss[pid] = rss_bytes(pid)
        samples.append(MemorySample(time.monotonic() - t0, rss))
        stop.wait(every_s)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def mean_total_rss(samples: list[MemorySample], start_s: float, end_s: float) -> float:
    totals = [sum(s.rss_by_worker.values()) for s in samples if start_s <= s.at_s < end_s and s.rss_by_worker]
    return statistics.fmean(totals) / MEBIBYTE if totals else float("nan")


def report(args: argparse.Namespace, outcomes: list[Outcome], samples: list[MemorySample], wall_s: float) -> tuple[str, bool]:
    statuses = Counter(o.status for o in outcomes)
    served = [o for o in outcomes if o.status == "200"]
    memory_flat = True
    failures = sum(n for status, n in statuses.items() if not (status == "200" or status.startswith("503") or status.startswith("4")))
    lines = [
        f"Machine: {args.machine}.",
        "",
        f"Clients: {args.clients}, duration: {args.duration:.0f} s (wall {wall_s:.1f} s until the last answer), "
        f"server: {args.describe_server}",
        "",
        f"Requests: {len(outcomes)}; status counts: "
        + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items())),
        f"5xx other than the deliberate 503s, and connection errors: {failures}",
        "",
    ]
    if served:
        seconds = [o.seconds for o in served]
        megapixels = sum(o.upload.pixels for o in served) / 1e6
        lines += [
            "| served | p50 s | p90 s | p99 s | max s | throughput req/s | input Mpx/s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(served)} | {percentile(seconds, .5):.2f} | {percentile(seconds, .9):.2f} | {percentile(seconds, .99):.2f} "
            f"| {max(seconds):.2f} | {len(served) / wall_s:.2f} | {megapixels / wall_s:.3f} |",
            "",
            "| input | served | p50 s | max s |",
            "|---|---:|---:|---:|",
        ]
        by_name: dict[str, list[float]] = {}
        for outcome in sorted(served, key=lambda o: o.upload.pixels):
            by_name.setdefault(outcome.upload.name, []).append(outcome.seconds)
        lines += [f"| {name} | {len(s)} | {percentile(s, .5):.2f} | {max(s):.2f} |" for name, s in by_name.items()]
        lines.append("")
    if samples:
        minute_1, minute_2 = mean_total_rss(samples, 0, 60), mean_total_rss(samples, 60, 120)
        peak = max(sum(s.rss_by_worker.values()) for s in samples) / MEBIBYTE
        workers = sorted({pid for s in samples for pid in s.rss_by_worker})
        lines += [
            f"Workers' resident memory (sum over {len(workers)} worker process(es), sampled every {args.sample_every:g} s, "
            f"{len(samples)} samples):",
            "",
            "| minute 1 mean MiB | minute 2 mean MiB | change | peak MiB |",
            "|---:|---:|---:|---:|",
            f"| {minute_1:.0f} | {minute_2:.0f} | {100 * (minute_2 - minute_1) / minute_1:+.1f}% | {peak:.0f} |",
            "",
        ]
        # Flat memory: minute 2 no more than 5% above minute 1 (a leak would grow with every request).
        memory_flat = not minute_2 > minute_1 * 1.05
        lines.append(f"Memory flat from minute 1 to minute 2 (within +5%): {'yes' if memory_flat else 'NO'}")
    return "\n".join(lines), failures == 0 and bool(served) and memory_flat


def drive(args: argparse.Namespace, url: str, master_pid: int | None) -> tuple[str, bool]:
    choices = uploads()
    outcomes: list[Outcome] = []
    samples: list[MemorySample] = []
    t0 = time.monotonic()
    deadline = t0 + args.duration
    stop = threading.Event()
    sampler = None
    if master_pid is not None:
        sampler = threading.Thread(target=sample_memory, args=(master_pid, t0, args.sample_every, stop, samples), daemon=True)
        sampler.start()
    clients = [threading.Thread(target=run_client, args=(url, choices, args.seed + i, deadline, outcomes), daemon=True)
               for i in range(args.clients)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    wall_s = time.monotonic() - t0
    stop.set()
    if sampler is not None:
        sampler.join()
    return report(args, outcomes, samples, wall_s)


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    if args.url:
        args.describe_server = args.url
        yield args.url.rstrip("/"), args.master_pid
        return
    env = {"WORKERS": args.workers, "THREADS": args.threads, "QUEUE_SIZE": args.queue_size, "MODELS": args.models}
    args.describe_server = "gunicorn started here with " + ", ".join(f"{k}={v}" for k, v in env.items())
    with live_server(**env) as server:
        yield server.url, server.process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (loopback); default: start gunicorn here")
    parser.add_argument("--master-pid", type=int, help="the running server's gunicorn master, for worker memory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120, help="seconds during which new requests start")
    parser.add_argument("--sample-every", type=float, default=3, help="seconds between memory samples")
    parser.add_argument("--workers", type=int, default=1, help="for the server started here")
    parser.add_argument("--threads", type=int, default=4, help="for the server started here")
    parser.add_argument("--queue-size", type=int, default=2, help="for the server started here")
    parser.add_argument("--models", default=Settings().models,
                        help="loaded by the server started here (requests use its default model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="also write the report (markdown) into this file, between "
                        f"its {' and '.join(markers(REPORT_NAME))} markers if it has them")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("--url must be a loopback address: this script generates load")
    args.machine = f"{cpu_description()}; fp32 ceiling {ceiling_in_fresh_process():.0f} GFLOP/s"
    with target(args) as (url, master_pid):
        text, passed = drive(args, url, master_pid)
    text += f"\nVerdict: {'PASS' if passed else 'FAIL'}\n"
    print(text)
    if args.report:
        write_section(REPORT_NAME, text, args.report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
