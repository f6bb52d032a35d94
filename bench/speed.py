"""Speed and memory of every model and backend, through the core and through HTTP.

Every configuration runs in a fresh process, so its peak RSS (VmHWM) is that of
a worker that loaded one model and served one input size. Effective GFLOP/s
count the network's useful work only (FLOP per input pixel x pixels), so tile
overlap and everything around the network (decode, encode) lower it; the
machine's fp32 ceiling is measured in the same run with a large numpy matmul.

    python bench/speed.py                 # the full table -> docs/benchmarks.md, docs/speed.png
    python bench/speed.py --sweep         # tile size x batch for srgan at 500x500 (chooses the defaults)

Run it under ``flock /tmp/cpu.lock`` on a shared machine (``make bench-speed`` does).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_server import live_server  # noqa: E402

DOCS = ROOT / "docs"
PHOTO = ROOT / "assets" / "test_examples" / "low_resolution" / "astronaut.png"
START, END = "<!-- speed:start -->", "<!-- speed:end -->"

# Multiply-adds x 2 of each network per input pixel (convolutions; activations are negligible).
MFLOP_PER_PIXEL = {"srgan": 4.44, "srresnet": 4.44, "realsr": 36.3, "realesrgan": 36.3}
SIDES = (128, 250, 500, 1000, 2000)
# What each model is timed on, per backend. srresnet has srgan's architecture (same speed), and the
# RRDBNet models do about 8x the work: larger sizes take minutes each on 2 cores, so they stop early.
PLAN: dict[str, dict[str, tuple[int, ...]]] = {
    "srgan": {"openvino": SIDES, "tensorflow": (128, 250, 500), "xla": (128, 250, 500)},
    "srresnet": {"openvino": (128, 250, 500)},
    "realsr": {"openvino": (128, 250), "tensorflow": (128,)},
    "realesrgan": {"openvino": (128, 250), "tensorflow": (128,)},
}
# Through HTTP: the default model and backend, up to this size (the core rows show the rest).
HTTP = ("srgan", "openvino", (128, 250, 500, 1000))
SWEEP_TILES = (112, 160, 208, 240)
# A 2000² input takes minutes on 2 cores: longer than the service's default request time limit.
TIME_LIMIT_S = 3600
# The worker's peak RSS allowed at 500² (issue 5); the sweep picks the fastest tiling within it.
RSS_TARGET_MB = 1024
SWEEP_BATCHES = (1, 2)


@dataclass
class Row:
    model: str
    backend: str
    via: str
    side: int
    tile: int
    batch: int
    runs: int
    median_s: float
    peak_rss_mb: float

    def gflops(self) -> float:
        return MFLOP_PER_PIXEL[self.model] * 1e6 * self.side ** 2 / self.median_s / 1e9


def runs_for(side: int) -> int:
    return 3 if side <= 500 else 1


def photo_png(side: int) -> bytes:
    """A real photo resampled to side x side: content like a user's, any size."""
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def measure_ceiling(n: int = 4096, repeats: int = 3) -> float:
    """fp32 GFLOP/s of numpy's BLAS on both cores: the practical ceiling for the convolutions."""
    a = np.random.default_rng(0).random((n, n), np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


# --- one configuration, in this (fresh) process -------------------------------------------

def core_worker(model: str, backend: str, side: int, tile: int, batch: int, runs: int) -> dict:
    from config import load_settings
    from core.options import UpscaleOptions
    from core.service import Service

    settings = load_settings(models=model, default_model=model, backend=backend, tile_size=tile, tile_batch=batch,
                             request_time_limit_s=TIME_LIMIT_S)
    service = Service.create(settings)
    service.registry.load_all()
    if not service.registry.ready:
        raise RuntimeError(f"{model} did not load: {service.registry.states()}")
    data = photo_png(side)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = service.upscale(data, UpscaleOptions(model=model))
        times.append(time.perf_counter() - started)
        assert (result.width, result.height) == (4 * side, 4 * side)
    return {"times": times, "peak_rss_mb": peak_rss_mb()}


def run_core(model: str, backend: str, side: int, tile: int, batch: int) -> Row:
    runs = runs_for(side)
    command = [sys.executable, __file__, "--worker", model, backend, str(side), str(tile), str(batch), str(runs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return Row(model, backend, "core", side, tile, batch, runs, statistics.median(measured["times"]),
               measured["peak_rss_mb"])


def run_http(model: str, backend: str, sides: tuple[int, ...], tile: int, batch: int) -> list[Row]:
    """One gunicorn worker serves every size; its peak RSS is read after each size."""
    rows = []
    with live_server(models=model, default_model=model, backend=backend, tile_size=tile, tile_batch=batch,
                     workers=1, request_time_limit_s=TIME_LIMIT_S, timeout_s=TIME_LIMIT_S) as server:
        worker = _gunicorn_worker(server.process.pid)
        for side in sides:
            data, times = photo_png(side), []
            for _ in range(runs_for(side)):
                started = time.perf_counter()
                answer = requests.post(f"{server.url}/model/predict", files={"image": ("in.png", data, "image/png")},
                                       data={"model": model}, timeout=900)
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
            rows.append(Row(model, backend, "http", side, tile, batch, len(times), statistics.median(times),
                            peak_rss_mb(worker)))
    return rows


def _gunicorn_worker(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return int(children[0])


# --- the runs and the report --------------------------------------------------------------

def full_table(tile: int, batch: int) -> list[Row]:
    rows = [_report(run_core(model, backend, side, tile, batch))
            for model, backends in PLAN.items() for backend, sides in backends.items() for side in sides]
    model, backend, sides = HTTP
    return rows + [_report(row) for row in run_http(model, backend, sides, tile, batch)]


def sweep() -> list[Row]:
    return [_report(run_core("srgan", "openvino", 500, tile, batch))
            for tile in SWEEP_TILES for batch in SWEEP_BATCHES]


def _fastest_within(rows: list[Row], rss_mb: float) -> tuple[int, int]:
    """The fastest tile and batch whose worker stays within ``rss_mb`` (or the leanest, if none does)."""
    fitting = [r for r in rows if r.peak_rss_mb <= rss_mb]
    best = min(fitting, key=lambda r: r.median_s) if fitting else min(rows, key=lambda r: r.peak_rss_mb)
    return best.tile, best.batch


def _report(row: Row) -> Row:
    print(f"{row.model:10} {row.backend:10} {row.via:4} {row.side:5}² tile {row.tile:3} x{row.batch}: "
          f"{row.median_s:8.2f} s  {row.peak_rss_mb:6.0f} MB  {row.gflops():5.0f} GFLOP/s", flush=True)
    return row


def markdown(rows: list[Row], ceilings: list[float], sweep_rows: list[Row]) -> str:
    ceiling = statistics.median(ceilings)
    lines = [
        START, "## Speed and memory", "",
        f"Measured by `make bench-speed` (bench/speed.py) on {os.cpu_count()} cores. "
        f"fp32 ceiling (numpy sgemm 4096², measured before and after the table): "
        f"{', '.join(f'{c:.0f}' for c in ceilings)} GFLOP/s; percentages use {ceiling:.0f}. "
        "Time is the median of 3 runs (≤ 500²) or 1 run (larger), end to end: PNG decode, tiles, network, "
        "PNG encode; *http* adds a real gunicorn worker and the upload/download. Peak RSS is the worker "
        "process's VmHWM (a fresh process per *core* row; for *http*, the worker's peak so far, sizes in "
        "increasing order). GFLOP/s counts useful network work only (MFLOP per input pixel × pixels ÷ time).", "",
        "| model | backend | via | input | tile × batch | time (s) | peak RSS (MB) | GFLOP/s | % of ceiling |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [_markdown_row(row, ceiling) for row in rows]
    if sweep_rows:
        lines += ["", "Tile sweep (srgan, openvino, 500² input, core):", "",
                  "| tile × batch | time (s) | peak RSS (MB) | GFLOP/s |", "|---|---:|---:|---:|"]
        lines += [f"| {r.tile} × {r.batch} | {r.median_s:.2f} | {r.peak_rss_mb:.0f} | {r.gflops():.0f} |"
                  for r in sweep_rows]
    lines += ["", "![time and memory against pixels](speed.png)", "", END]
    return "\n".join(lines)


def _markdown_row(row: Row, ceiling: float) -> str:
    return (f"| {row.model} | {row.backend} | {row.via} | {row.side}² | {row.tile} × {row.batch} | "
            f"{row.median_s:.2f} | {row.peak_rss_mb:.0f} | {row.gflops():.0f} | {100 * row.gflops() / ceiling:.0f}% |")


def write_section(section: str, path: Path = DOCS / "benchmarks.md") -> None:
    """Replace only the speed section; other scripts own the rest of the file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def plot(rows: list[Row], path: Path = DOCS / "speed.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r.model, r.backend, r.via) for r in rows})
    for key in series:
        points = sorted((r.side ** 2, r.median_s, r.peak_rss_mb) for r in rows if (r.model, r.backend, r.via) == key)
        pixels = [p[0] / 1e6 for p in points]
        label = " / ".join(key)
        times.plot(pixels, [p[1] for p in points], marker="o", label=label)
        memory.plot(pixels, [p[2] for p in points], marker="o", label=label)
    for axes, title, unit in ((times, "time", "s"), (memory, "worker peak RSS", "MB")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("input megapixels")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    memory.axhline(1024, color="grey", linestyle="--", linewidth=0.8)
    memory.axhline(2048, color="grey", linestyle=":", linewidth=0.8)
    times.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    from config import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=6, metavar=("MODEL", "BACKEND", "SIDE", "TILE", "BATCH", "RUNS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true", help="time tile sizes and batches, then stop")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep in the report")
    args = parser.parse_args()
    if args.worker:
        model, backend, side, tile, batch, runs = args.worker
        print(json.dumps(core_worker(model, backend, int(side), int(tile), int(batch), int(runs))))
        return
    defaults = Settings()
    ceilings = [measure_ceiling()]
    print(f"ceiling {ceilings[0]:.0f} GFLOP/s", flush=True)
    if args.sweep:
        sweep()
        return
    sweep_rows = [] if args.no_sweep else sweep()
    tile, batch = _fastest_within(sweep_rows, RSS_TARGET_MB) if sweep_rows else (defaults.tile_size,
                                                                                 defaults.tile_batch)
    print(f"table with tile {tile} x batch {batch}", flush=True)
    rows = full_table(tile, batch)
    ceilings.append(measure_ceiling())
    write_section(markdown(rows, ceilings, sweep_rows))
    plot(rows)
    (DOCS / "speed-results.json").write_text(json.dumps(
        {"ceilings_gflops": ceilings, "rows": [asdict(r) for r in rows], "sweep": [asdict(r) for r in sweep_rows]},
        indent=1))


if __name__ == "__main__":
    main()
