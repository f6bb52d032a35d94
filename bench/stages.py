"""Where a request's time goes, stage by stage, and what the PNG compression level trades.

    python -m bench.stages [--model srgan] [--side 500] [--runs 3] [--levels 0 1 2 3 6 9]

*stages*: one gunicorn worker with the default settings serves a side x side photo ``--runs`` times;
each stage is the median of the worker's Server-Timing values (upload parse, queue, decode, float
conversion, network, assembly, resize, encode), and *transfer and framework* is the client's
wall-clock time less their sum. *png*: the model's real output of that photo encoded at each
PNG_COMPRESSION_LEVEL: median seconds, CPU seconds (all threads) and bytes. *cmyk*: the photo as a CMYK
JPEG decoded without and with a CMYK ICC profile (converted to sRGB by Pillow's plain formula, or through the
profile by LittleCMS): median seconds. Run it under
``flock -x /tmp/cpu.lock``; the figures go to docs/speed.md with the CPU they ran on.
"""
from __future__ import annotations

import argparse
import statistics
import time

import requests

from harness.photos import photo_png


def parse_server_timing(header: str) -> dict[str, float]:
    """Seconds per stage from a Server-Timing header."""
    stages = {}
    for entry in header.split(", "):
        name, duration = entry.split(";dur=")
        stages[name] = float(duration) / 1000
    return stages


def stages(model: str, side: int, runs: int) -> tuple[dict[str, float], float, bytes]:
    from harness.live_server import live_server

    data = photo_png(side)
    totals, per_stage, output = [], [], b""
    with live_server(models=model, default_model=model, workers=1) as server:
        for _ in range(runs):
            started = time.perf_counter()
            answer = requests.post(f"{server.url}/model/predict", data={"model": model}, timeout=900,
                                   files={"image": ("photo.png", data, "image/png")})
            totals.append(time.perf_counter() - started)
            answer.raise_for_status()
            per_stage.append(parse_server_timing(answer.headers["Server-Timing"]))
            output = answer.content
    medians = {name: statistics.median(run[name] for run in per_stage) for name in per_stage[0]}
    return medians, statistics.median(totals), output


def png_levels(output: bytes, levels: list[int], runs: int) -> list[tuple[int, float, float, int]]:
    import io

    import numpy as np
    from PIL import Image

    from config import Settings
    from core import encoding

    pixels = np.asarray(Image.open(io.BytesIO(output)).convert("RGB"))
    rows = []
    for level in levels:
        times, cpu_times, size = [], [], 0
        for _ in range(runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            size = len(encoding.encode(pixels, None, None, "png", 90, level, Settings().worker_cores))
            times.append(time.perf_counter() - started)
            # Every thread's CPU time: what the encode takes from a host whose cores serve other requests too.
            cpu_times.append(time.process_time() - cpu_started)
        rows.append((level, statistics.median(times), statistics.median(cpu_times), size))
    return rows


def cmyk_decode(side: int, runs: int) -> tuple[float, float]:
    """Median seconds to decode a side x side photo saved as a CMYK JPEG, without and with a CMYK ICC profile."""
    import io

    from PIL import Image

    from config import Settings
    from core import images
    from harness.cmyk_profile import cmyk_profile

    cmyk = Image.open(io.BytesIO(photo_png(side))).convert("CMYK")
    medians = []
    for profile in (None, cmyk_profile()):
        buffer = io.BytesIO()
        cmyk.save(buffer, "JPEG", quality=95, icc_profile=profile)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            images.decode(buffer.getvalue(), Settings().max_input_pixels)
            times.append(time.perf_counter() - started)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def main() -> None:
    from bench.machine import ceiling_in_fresh_process, cpu_description

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="srgan")
    parser.add_argument("--side", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3, 6, 9])
    args = parser.parse_args()
    print(f"{cpu_description()}; fp32 ceiling {ceiling_in_fresh_process():.0f} GFLOP/s", flush=True)
    medians, total, output = stages(args.model, args.side, args.runs)
    print(f"{args.model} {args.side}² through HTTP, median of {args.runs}: {total:.3f} s")
    print("| stage | seconds | share |\n|---|---:|---:|")
    rest = total - sum(medians.values())
    for name, seconds in [*medians.items(), ("transfer and framework", rest)]:
        print(f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f} % |")
    outside = total - medians["network"]
    print(f"outside the network: {outside:.3f} s = {100 * outside / total:.1f} % of the request")
    print("| level | encode seconds | CPU seconds | bytes |\n|---|---:|---:|---:|")
    for level, seconds, cpu_seconds, size in png_levels(output, args.levels, args.runs):
        print(f"| {level} | {seconds:.3f} | {cpu_seconds:.3f} | {size} |")
    plain, profiled = cmyk_decode(args.side, args.runs)
    print(f"CMYK JPEG {args.side}² decoded, median of {args.runs}: {plain:.3f} s plain, {profiled:.3f} s through "
          f"its ICC profile ({profiled / plain:.1f}x)")


if __name__ == "__main__":
    main()
