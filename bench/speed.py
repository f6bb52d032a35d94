"""Speed and memory of every model through HTTP, against the targets as ratios to the CPU's fp32 ceiling.

    python -m bench.speed                        # the table -> docs/benchmarks.md, docs/speed-results.json
    python -m bench.speed --only srgan:bf16 --sides 128 500 --no-write

For each model and precision a real gunicorn worker (one, default settings but ``PRECISION``) serves a
photo at each side; each row is the median of its runs: the client's wall-clock time, the worker's
stages from its Server-Timing header, and the worker's peak RSS (VmHWM) so far. *Useful* GFLOP/s
count the network's work on the input's pixels only (MFLOP per input pixel x pixels / time), so tile
overlap and everything around the network lower them. The ceiling C is numpy's sgemm on the same
cores, measured in a fresh process before and after the table; the CPU model and flags are read in
the same run. Run it under ``flock -x /tmp/cpu.lock`` (``make bench-speed`` does).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import requests

from bench.machine import ceiling_in_fresh_process, cpu_description
from bench.report import DOCS, write_section
from bench.stages import parse_server_timing
from core.models.specs import SPECS
from harness.live_server import live_server
from harness.photos import photo_png
from harness.process import gunicorn_worker, peak_rss_mb

# Multiply-adds x 2 of each 4x network per input pixel (convolutions; activations are negligible), from
# TensorFlow's profiler on the Keras graphs (scripts/measure_flops.py). Real-CUGAN crops its borders, so
# its figure grows with the window (0.80 at 64 px, 1.38 at 128, 1.74 at 256): 2.0 is an estimate for
# large windows.
MFLOP_PER_PIXEL = {"srgan": 4.45, "srresnet": 4.45, "realsr": 35.9, "realesrgan": 35.9,
                   "span": 0.85, "anime": 1.24, "realcugan": 2.0}
SIDES = (128, 500)
# (model, PRECISION) pairs timed: every model in what PRECISION=auto gives it on a CPU with native bf16,
# and srgan in f32 too (its f32 target holds on any CPU).
PLAN = tuple(pair for name in MFLOP_PER_PIXEL
             for pair in ([(name, "bf16"), (name, "f32")] if name == "srgan" else
                          [(name, "bf16" if SPECS[name].bf16_ok else "f32")]))
# The targets, as ratios of useful GFLOP/s to the ceiling at 500² through HTTP.
TARGETS = {("srgan", "bf16"): 1.2, ("srgan", "f32"): 0.8, ("realesrgan", "f32"): 0.7}
MAX_OUTSIDE_SHARE = 0.15
RESULTS_FILE = DOCS / "speed-results.json"
MAX_SMALL_OVER_FLOOR = 1.5


@dataclass
class Row:
    model: str
    precision: str
    side: int
    runs: int
    seconds: float
    stages: dict[str, float]
    peak_rss_mb: float

    def gflops(self) -> float:
        return MFLOP_PER_PIXEL[self.model] * 1e6 * self.side ** 2 / self.seconds / 1e9

    @property
    def outside_share(self) -> float:
        return 1 - self.stages["network"] / self.seconds


def runs_for(model: str, side: int) -> int:
    return 3 if MFLOP_PER_PIXEL[model] * side ** 2 < 2e6 * 500 ** 2 else 2


def serve(model: str, arithmetic: str, sides: tuple[int, ...]) -> list[Row]:
    """One gunicorn worker serves every size; its peak RSS is read after each size."""
    rows = []
    with live_server(start_timeout_s=600, models=model, default_model=model, precision=arithmetic, workers=1,
                     request_time_limit_s=3600, timeout_s=3600) as server:
        worker = gunicorn_worker(server.process.pid)
        for side in sides:
            data, times, stages = photo_png(side), [], []
            for _ in range(runs_for(model, side)):
                started = time.perf_counter()
                answer = requests.post(f"{server.url}/model/predict", files={"image": ("in.png", data, "image/png")},
                                       data={"model": model}, timeout=3600)
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
                stages.append(parse_server_timing(answer.headers["Server-Timing"]))
            medians = {name: statistics.median(run[name] for run in stages) for name in stages[0]}
            row = Row(model, arithmetic, side, len(times), statistics.median(times), medians, peak_rss_mb(worker))
            print(f"{model:10} {arithmetic:4} {side:4}²: {row.seconds:7.2f} s, network {medians['network']:7.2f} s, "
                  f"{row.peak_rss_mb:5.0f} MiB, {row.gflops():5.0f} GFLOP/s", flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[Row], ceilings: list[float], machine: str) -> str:
    ceiling = statistics.median(ceilings)
    lines = [
        "## Speed and memory", "",
        f"Measured by `make bench-speed` (`python -m bench.speed`) on {machine}. fp32 ceiling C (numpy sgemm "
        f"4096², a fresh process before and after the table): {', '.join(f'{c:.0f}' for c in ceilings)} GFLOP/s; "
        f"ratios use {ceiling:.0f}. Each row: one gunicorn worker with the default settings but `MODELS` (the "
        "row's model alone) and `PRECISION`, "
        "tiles from `MEMORY_BUDGET_MB`; time is the client's median over the runs, end to end through HTTP "
        "(upload, decode, tiles, network, PNG encode, download); *network* is the worker's own Server-Timing "
        "share; peak RSS is the worker's VmHWM. Useful GFLOP/s count the network's work on the input pixels "
        "only (MFLOP per input pixel × pixels ÷ time).", "",
        "| model | precision | input | runs | time (s) | network (s) | outside the network | peak RSS (MiB) "
        "| useful GFLOP/s | ÷ C | target |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row.model} | {row.precision} | {row.side}² | {row.runs} | {row.seconds:.2f} | "
                     f"{row.stages['network']:.2f} | {100 * row.outside_share:.0f} % | {row.peak_rss_mb:.0f} | "
                     f"{row.gflops():.0f} | {row.gflops() / ceiling:.2f} | {_verdict(row, rows, ceiling)} |")
    lines += ["", "Where a target is missed, [speed.md](speed.md) gives the measurements of what limits it."]
    return "\n".join(lines)


def _verdict(row: Row, rows: list[Row], ceiling: float) -> str:
    """The targets this row is held to, each with met or missed."""
    checks = []
    target = TARGETS.get((row.model, row.precision))
    if target is not None and row.side == 500:
        checks.append(f"≥ {target} C: {'met' if row.gflops() / ceiling >= target else 'missed'}")
    if row.side == 500 and (row.model, row.precision) in TARGETS:
        checks.append(f"outside ≤ {MAX_OUTSIDE_SHARE:.0%}: {'met' if row.outside_share <= MAX_OUTSIDE_SHARE else 'missed'}")
    if row.side == 128 and row.model == "srgan":
        over = row.seconds / row.stages["network"]
        checks.append(f"≤ {MAX_SMALL_OVER_FLOOR}× its network time: {over:.2f}×, "
                      f"{'met' if over <= MAX_SMALL_OVER_FLOOR else 'missed'}")
    return "; ".join(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="MODEL:PRECISION", help="time these pairs only")
    parser.add_argument("--sides", type=int, nargs="+", default=list(SIDES))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--from-results", action="store_true",
                        help="time nothing: rewrite the section from the rows in docs/speed-results.json")
    args = parser.parse_args()
    if args.from_results:
        results = json.loads(RESULTS_FILE.read_text())
        write_section("speed", markdown([Row(**row) for row in results["rows"]], results["ceilings_gflops"],
                                        results["machine"]))
        return
    plan = [tuple(pair.split(":")) for pair in args.only] if args.only else list(PLAN)
    machine = cpu_description()
    ceilings = [ceiling_in_fresh_process()]
    print(f"{machine}; ceiling {ceilings[0]:.0f} GFLOP/s", flush=True)
    rows = [row for model, arithmetic in plan for row in serve(model, arithmetic, tuple(args.sides))]
    ceilings.append(ceiling_in_fresh_process())
    section = markdown(rows, ceilings, machine)
    print(section)
    if not args.no_write:
        write_section("speed", section)
        RESULTS_FILE.write_text(json.dumps(
            {"machine": machine, "ceilings_gflops": ceilings, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
