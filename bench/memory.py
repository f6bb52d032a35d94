"""What memory each model needs, and whether a worker stays within MEMORY_BUDGET_MB.

    python -m bench.memory windows [--models srgan,realsr] [--sides 128 192 256]
    python -m bench.memory averages [--sides 64 128 256]
    python -m bench.memory request [--sides 500 1000]
    python -m bench.memory worker [--models ...] [--sides 500 1000 2000]

*windows*: for each model and native scale in f32 (and in bf16 on a CPU with native bf16), a fresh process
loads the model, gives the backend's buffers back, and runs one window of each side in increasing order; the peak RSS (VmHWM) above the loaded process's RSS, per window
pixel, is what the model's spec records as ``window_bytes_per_pixel`` (the largest over the sides).
*averages*: for each native scale of each model with whole-image averages (Real-CUGAN), in f32 (and bf16 where
native), a fresh process measures the averages of an image of each side in increasing order (``harness.memory_probe
averages``): the peak above the loaded process per pixel of the largest window as the network runs it (with its
border), what the spec records as ``averages_bytes_per_pixel`` at that scale.
*request*: srgan with small fixed tiles on whole images: the peak above the loaded process and the
windows, per input and per output pixel (core/memory.py's REQUEST_BYTES_PER_INPUT_PIXEL and RESULT_COPIES).
*worker*: one gunicorn worker with the default settings serves each model at each side; the worker's
peak RSS against the budget. Figures go to docs/speed.md with this command.
"""
from __future__ import annotations

import argparse
from itertools import product
import json
import subprocess
import sys

import requests

from bench.report import ROOT
from config import MEBIBYTE
from core.memory import STATISTICS_WINDOW, run_pixels
from core.models.levels import NO_DENOISE
from harness.photos import photo_png
from core.models.specs import PACKAGED
from harness.process import gunicorn_worker, peak_rss_mb

MODELS = PACKAGED


def fresh(*arguments: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "harness.memory_probe", *arguments], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def windows(models: list[str], sides: list[int]) -> None:
    from core.models import precision

    from core.models.specs import SPECS

    for model in models:
        for arithmetic, scale in product(("f32", "bf16") if precision.native_bf16() else ("f32",), SPECS[model].scales):
            result = fresh("windows", model, arithmetic, str(scale), *map(str, sides))
            per_pixel = {side: mb * MEBIBYTE / int(side) ** 2 for side, mb in result["peak_above_mb"].items()}
            print(f"{model:10} {scale}x {result['precision']:4}: loaded {result['baseline_mb']:.0f} MiB; "
                  + ", ".join(f"{side}² +{result['peak_above_mb'][side]:.0f} MiB = {per_pixel[side]:.0f} B/px"
                              for side in per_pixel)
                  + f"; largest {max(per_pixel.values()):.0f} B/px", flush=True)


def averages(models: list[str], sides: list[int]) -> None:
    from core.models import precision
    from core.models.specs import SPECS

    for model in models:
        spec = SPECS[model]
        if spec.averages_bytes_per_pixel is None:
            continue
        for arithmetic, scale in product(("f32", "bf16") if precision.native_bf16() else ("f32",), spec.scales):
            border = spec.variant(scale, NO_DENOISE).border
            result = fresh("averages", model, arithmetic, str(scale), *map(str, sides))
            per_pixel = {side: mb * MEBIBYTE / run_pixels(int(side), int(side), border)
                         for side, mb in result["peak_above_mb"].items()}
            print(f"{model:10} {scale}x {result['precision']:4}: loaded {result['baseline_mb']:.0f} MiB; "
                  + ", ".join(f"{side}² +{result['peak_above_mb'][side]:.0f} MiB = {per_pixel[side]:.0f} B/px as run"
                              for side in per_pixel)
                  + f"; largest {max(per_pixel.values()):.0f} B/px", flush=True)


def request(sides: list[int], tile: int) -> None:
    result = fresh("request", str(tile), *map(str, sides))
    window = result["window_mb"]
    for side, mb in result["peak_above_mb"].items():
        side = int(side)
        outside = (mb - window) * MEBIBYTE
        print(f"srgan {side}² (tile {tile}): peak +{mb:.0f} MiB, of which the window {window:.0f} MiB; the rest "
              f"{outside / MEBIBYTE:.0f} MiB = {outside / (16 * side * side):.1f} B per output pixel", flush=True)


def worker(models: list[str], sides: list[int]) -> None:
    from config import Settings
    from harness.live_server import live_server

    budget = Settings().memory_budget_bytes("cpu") // MEBIBYTE
    with live_server(start_timeout_s=900, models=Settings.model_fields["models"].default, workers=1,
                     request_time_limit_s=3600, timeout_s=3600) as server:
        pid = gunicorn_worker(server.process.pid)
        print(f"loaded: peak {peak_rss_mb(pid):.0f} MiB (budget {budget} MiB)", flush=True)
        for side in sides:
            data = photo_png(side)
            for model in models:
                answer = requests.post(f"{server.url}/model/predict", data={"model": model}, timeout=3600,
                                       files={"image": ("photo.png", data, "image/png")})
                answer.raise_for_status()
                peak = peak_rss_mb(pid)
                print(f"{model:10} {side}²: worker peak {peak:.0f} MiB, {'within' if peak <= budget else 'OVER'} "
                      f"the {budget} MiB budget", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("windows", "averages", "request", "worker"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sides", type=int, nargs="+")
    parser.add_argument("--tile", type=int, default=64, help="request: the fixed tile size")
    args = parser.parse_args()
    models = args.models.split(",")
    if args.what == "windows":
        windows(models, args.sides or [128, 192, 256])
    elif args.what == "averages":
        averages(models, args.sides or [64, 128, STATISTICS_WINDOW])
    elif args.what == "request":
        request(args.sides or [500, 1000], args.tile)
    else:
        worker(models, args.sides or [500, 1000, 2000])


if __name__ == "__main__":
    main()
