"""Where a request's time goes, stage by stage, and what the PNG compression level trades.

    python -m bench.stages [--model srgan] [--side 500] [--runs 3] [--levels 0 1 2 3 6 9]

*stages*: one gunicorn worker with the default settings serves a side x side photo ``--runs`` times;
each stage is the median of the worker's Server-Timing values (upload parse, header read, queue, decode, float
conversion, network, assembly, resize, encode), and *transfer and framework* is the client's
wall-clock time less their sum. *header*: what a worker's header lock holds per request (``Service.read_header``,
one request at a time): the header of each of ``header_uploads`` read from its spool file, median seconds.
*png*: the model's real output of that photo encoded at each PNG_COMPRESSION_LEVEL: median seconds, CPU seconds
(all threads) and bytes. *cmyk*: the photo as a CMYK
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


def header_uploads() -> dict[str, bytes]:
    """Typical uploads, the photo as PNG and JPEG at 500² and 2000², and the worst case for the header lock: a TIFF
    of 31 MiB (near the default ``MAX_UPLOAD_BYTES``, 32 MiB) whose ICC profile, which the read copies, is nearly all
    of it."""
    import io

    from PIL import Image

    from config import MEBIBYTE
    from harness.photos import photo_profiled_tiff

    uploads = {}
    for side in (500, 2000):
        png = photo_png(side)
        jpeg = io.BytesIO()
        Image.open(io.BytesIO(png)).save(jpeg, "JPEG", quality=95)
        uploads |= {f"PNG {side}²": png, f"JPEG {side}²": jpeg.getvalue()}
    uploads["TIFF 64², 31 MiB ICC profile"] = photo_profiled_tiff(64, 31 * MEBIBYTE)
    return uploads


def header_reads(runs: int) -> list[tuple[str, int, float]]:
    """Each of ``header_uploads``: its bytes and the median seconds of reading its header as a worker does, from
    the file its upload waits in."""
    import tempfile

    from config import Settings
    from core import images
    from core.upload import SpooledUpload, upload_bytes

    rows, max_pixels = [], Settings().max_input_pixels
    for name, data in header_uploads().items():
        with tempfile.TemporaryFile() as spooled:
            spooled.write(data)
            spooled.flush()
            upload, times = SpooledUpload(spooled), []
            for _ in range(runs):
                started = time.perf_counter()
                images.read_header(upload_bytes(upload), max_pixels)
                times.append(time.perf_counter() - started)
        rows.append((name, len(data), statistics.median(times)))
    return rows


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
        print(f"| {name} | {seconds:.4f} | {100 * seconds / total:.1f} % |")
    outside = total - medians["network"]
    print(f"outside the network: {outside:.3f} s = {100 * outside / total:.1f} % of the request")
    print("| level | encode seconds | CPU seconds | bytes |\n|---|---:|---:|---:|")
    for level, seconds, cpu_seconds, size in png_levels(output, args.levels, args.runs):
        print(f"| {level} | {seconds:.3f} | {cpu_seconds:.3f} | {size} |")
    print(f"| upload | bytes | header read, median of {args.runs} (s) |\n|---|---:|---:|")
    for name, size, seconds in header_reads(args.runs):
        print(f"| {name} | {size} | {seconds:.4f} |")
    plain, profiled = cmyk_decode(args.side, args.runs)
    print(f"CMYK JPEG {args.side}² decoded, median of {args.runs}: {plain:.3f} s plain, {profiled:.3f} s through "
          f"its ICC profile ({profiled / plain:.1f}x)")


if __name__ == "__main__":
    main()
