"""One memory measurement in this (fresh) process, printed as a JSON line; bench.memory and the tests run it.

    python -m harness.memory_probe windows MODEL PRECISION SIDE [SIDE ...]
    python -m harness.memory_probe averages MODEL PRECISION SCALE SIDE [SIDE ...]
    python -m harness.memory_probe request TILE SIDE [SIDE ...]
    python -m harness.memory_probe reserve PICTURE SIDE STRENGTH ROUTE
    python -m harness.memory_probe reserve-averages SCALE TILE SIDE
    python -m harness.memory_probe shapes MODEL SCALE COUNT

*windows*: load MODEL in PRECISION, give the backend's buffers back, then run one window of each SIDE
in increasing order: the peak RSS above the loaded process after each. *averages*: the same for the whole-image
averages (Real-CUGAN's) of an image of each SIDE, measured alone as a request measures them before its tiles (in
windows of STATISTICS_WINDOW), their buffers given back after each. *request*: srgan with tiles of
TILE on whole photos of each SIDE: the peak above the loaded process, and the share of one window.
*reserve*: srgan with 64-px tiles on one PICTURE (``harness.photos.PICTURES``) of SIDE at STRENGTH, through ROUTE
(``/model/predict``, or ``/app/upscale`` with the page's layers, its answer read to the end): the peak above the
loaded process, and what the request's plan reserved for it (``Plan.host_bytes``). *reserve-averages*: the same for
realcugan at SCALE with TILE-px tiles on a photo of SIDE, through the core: its whole-image averages' windows, which
are measured before the tiles, may be larger than them. *shapes*: MODEL at SCALE (f32) runs windows of COUNT
different shapes (sides multiples of ``WINDOW_QUANTUM``, the smallest first), each given back and the heap trimmed as
serving does: the RSS above the loaded process after each, as a long-running worker holds it between requests.
"""
from __future__ import annotations

import io
import json
import math
import sys
from typing import TYPE_CHECKING

import numpy as np

from config import MEBIBYTE
from core.memory import reset_peak_rss
from harness.photos import PICTURES, photo_png
from core.tiling import WINDOW_QUANTUM
from harness.process import peak_rss_mb

if TYPE_CHECKING:
    from core.service import Service



def rss_mb() -> float:
    from core.memory import rss_bytes

    return rss_bytes() / MEBIBYTE


def loaded_service(model: str, **overrides: object) -> Service:
    from config import load_settings
    from core.service import Service

    service = Service.create(load_settings(models=model, default_model=model, request_time_limit_s=3600.0,
                                           **overrides))
    service.registry.load_all()
    if not service.registry.ready:
        raise RuntimeError(f"{model} did not load: {service.registry.states()}")
    return service


def probe_windows(model: str, arithmetic: str, scale: int, sides: list[int]) -> dict:
    network = loaded_service(model, precision=arithmetic).registry.get(model, scale)
    reset_peak_rss()  # the peak of loading (converting every network) is not a window's
    baseline = rss_mb()
    peaks = {}
    for side in sides:
        network.predict(np.random.default_rng(0).random((1, side, side, 3), np.float32))
        network.release_memory()
        peaks[side] = peak_rss_mb() - baseline
    return {"precision": network.precision, "baseline_mb": baseline, "peak_above_mb": peaks}


def probe_averages(model: str, arithmetic: str, scale: int, sides: list[int]) -> dict:
    network = loaded_service(model, precision=arithmetic).registry.get(model, scale)
    network.release_memory()
    reset_peak_rss()  # the peak of loading (converting every network) is not the averages'
    baseline = rss_mb()
    peaks = {}
    for side in sides:
        network.predictor(np.random.default_rng(0).random((side, side, 3), np.float32))
        peaks[side] = peak_rss_mb() - baseline
    return {"precision": network.precision, "baseline_mb": baseline, "peak_above_mb": peaks}


def probe_shapes(model: str, scale: int, count: int) -> dict:
    from core import memory

    network = loaded_service(model, precision="f32").registry.get(model, scale)
    network.release_memory()
    memory.trim_heap()
    baseline = rss_mb()
    sides = [WINDOW_QUANTUM * step for step in range(1, math.isqrt(count - 1) + 2)]
    shapes = sorted(((height, width) for height in sides for width in sides), key=lambda shape: shape[0] * shape[1])
    kept = []
    for height, width in shapes[:count]:
        network.predict(np.random.default_rng(height * width).random((1, height, width, 3), np.float32))
        network.release_memory()
        memory.trim_heap()
        kept.append(rss_mb() - baseline)
    return {"kept_above_mb": kept}


def probe_request(sides: list[int], tile: int) -> dict:
    from core.options import UpscaleOptions

    service = loaded_service("srgan", tile_size=tile)
    network = service.registry.get("srgan")
    window = tile + 2 * network.margin
    network.predict(np.zeros((1, window, window, 3), np.float32))
    network.release_memory()
    baseline = rss_mb()
    with_window = peak_rss_mb() - baseline
    peaks = {}
    for side in sides:
        service.upscale(photo_png(side), UpscaleOptions(model="srgan"))
        peaks[side] = peak_rss_mb() - baseline
    return {"window_mb": with_window, "peak_above_mb": peaks}


def probe_reserve(picture: str, side: int, strength: str, route: str) -> dict:
    from app import create_app
    from core.options import UpscaleOptions

    app = create_app(loaded_service("srgan", tile_size=64).settings, load_models=False)
    service = app.extensions["super_resolution"]
    service.registry.load_all()
    network = service.registry.get("srgan")
    window = 64 + 2 * network.margin
    network.predict(np.zeros((1, window, window, 3), np.float32))
    network.release_memory()
    data = PICTURES[picture](side)
    reserved = service.prepare(data, UpscaleOptions(model="srgan", strength=float(strength)),
                               with_layers=route == "/app/upscale").host_bytes
    baseline = rss_mb()
    reset_peak_rss()
    answer = app.test_client().post(route, data={"image": (io.BytesIO(data), "picture.png"), "model": "srgan",
                                                 "strength": strength}, content_type="multipart/form-data")
    assert answer.status_code == 200 and b'"error"' not in answer.data[:200], answer.data[:300]
    return {"peak_above_mb": peak_rss_mb() - baseline, "reserved_mb": reserved / MEBIBYTE}


def probe_reserve_averages(scale: int, tile: int, side: int) -> dict:
    from core.options import UpscaleOptions

    service = loaded_service("realcugan", tile_size=tile)
    plan = service.prepare(photo_png(side), UpscaleOptions(model="realcugan", scale=scale))
    baseline = rss_mb()
    reset_peak_rss()
    service.run(plan)
    return {"peak_above_mb": peak_rss_mb() - baseline, "reserved_mb": plan.host_bytes / MEBIBYTE,
            "tile": plan.passes[0].tile, "averages_window": plan.passes[0].averages_window}


def main(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "windows":
        print(json.dumps(probe_windows(rest[0], rest[1], int(rest[2]), [int(side) for side in rest[3:]])))
    elif kind == "averages":
        print(json.dumps(probe_averages(rest[0], rest[1], int(rest[2]), [int(side) for side in rest[3:]])))
    elif kind == "reserve-averages":
        print(json.dumps(probe_reserve_averages(*(int(argument) for argument in rest))))
    elif kind == "shapes":
        print(json.dumps(probe_shapes(rest[0], int(rest[1]), int(rest[2]))))
    elif kind == "reserve":
        print(json.dumps(probe_reserve(rest[0], int(rest[1]), rest[2], rest[3])))
    else:
        print(json.dumps(probe_request([int(side) for side in rest[1:]], int(rest[0]))))


if __name__ == "__main__":
    main(sys.argv[1:])
