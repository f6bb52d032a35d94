"""One memory measurement in this (fresh) process, printed as a JSON line; bench.memory and the tests run it.

    python -m harness.memory_probe windows MODEL PRECISION SIDE [SIDE ...]
    python -m harness.memory_probe request TILE SIDE [SIDE ...]

*windows*: load MODEL in PRECISION, give the backend's buffers back, then run one window of each SIDE
in increasing order: the peak RSS above the loaded process after each. *request*: srgan with tiles of
TILE on whole photos of each SIDE: the peak above the loaded process, and the share of one window.
"""
from __future__ import annotations

import json
from pathlib import Path
import sys

import numpy as np

from harness.photos import photo_png
from harness.process import peak_rss_mb

MEBIBYTE = 1024 * 1024


def rss_mb() -> float:
    from core.memory import rss_bytes

    return rss_bytes() / MEBIBYTE


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def loaded_service(model: str, **overrides: object):
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


def main(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "windows":
        print(json.dumps(probe_windows(rest[0], rest[1], int(rest[2]), [int(side) for side in rest[3:]])))
    else:
        print(json.dumps(probe_request([int(side) for side in rest[1:]], int(rest[0]))))


if __name__ == "__main__":
    main(sys.argv[1:])
