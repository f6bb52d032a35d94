"""What an upscale will cost, known before any work: refuse at once what cannot finish in time.

A model's time is a fixed cost per network call (one window of tiles) plus a cost per window pixel. Both are
measured on this machine when the model loads, from two window sizes, so the estimate covers what the pixel
count alone misses: a 1 x 4,000,000 image is thousands of calls on tiny windows. The tile plan is the pipeline's
own (``plan_tiles``), so the estimate counts exactly the windows that would run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import TooLarge
from core.tiling import plan_tiles

# Runs of the network per window with ensemble=true (4 rotations x 2 flips).
ENSEMBLE_RUNS = 8
# Side of the small window of the two measured; the large one is a tile of TILE_SIZE with its margins,
# or, where the memory budget sizes the tiles, of MEASURED_TILE (the cost is linear in the pixels beyond it).
SMALL_WINDOW = 16
MEASURED_TILE = 128


class TooCostly(TooLarge):
    """The request would run past the time limit: refused before it queues."""


@dataclass(frozen=True)
class Throughput:
    """Seconds of one network call on this machine: ``per_call_s + per_pixel_s * window pixels``."""

    per_call_s: float
    per_pixel_s: float

    def seconds(self, windows: int, window_pixels: int) -> float:
        return windows * self.per_call_s + window_pixels * self.per_pixel_s


def measure(predict: Callable[[np.ndarray], np.ndarray], large_window: int) -> Throughput:
    """Time one call at two window sizes (each after a first, untimed call that compiles its shape)."""
    small, large = (_timed_call(predict, side) for side in (SMALL_WINDOW, large_window))
    per_pixel = max(0.0, (large - small) / (large_window ** 2 - SMALL_WINDOW ** 2))
    return Throughput(max(0.0, small - per_pixel * SMALL_WINDOW ** 2), per_pixel)


def _timed_call(predict: Callable[[np.ndarray], np.ndarray], side: int) -> float:
    window = np.zeros((1, side, side, 3), np.float32)
    predict(window)
    started = time.perf_counter()
    predict(window)
    return time.perf_counter() - started


def estimate_seconds(throughput: Throughput, width: int, height: int, tile: int, margin: int,
                     ensemble: bool) -> float:
    """Seconds the network would take on a ``width`` x ``height`` input, from the pipeline's tile plan."""
    tiles = plan_tiles(height, width, tile, margin)
    window_height, window_width = tiles[0].window_shape
    runs = ENSEMBLE_RUNS if ensemble else 1
    return runs * throughput.seconds(len(tiles), len(tiles) * window_height * window_width)


def check_fits(seconds: float, limit_s: float, model: str, width: int, height: int, ensemble: bool) -> None:
    """413 at once, before queueing, for a request the time limit would stop anyway."""
    if seconds <= limit_s:
        return
    how = f"model {model}" + (" with ensemble (8 passes)" if ensemble else "")
    raise TooCostly(f"the {width}x{height} image would take about {seconds:.0f} s with {how} on this server, "
                    f"past the request time limit of {limit_s:g} s (REQUEST_TIME_LIMIT_S); "
                    f"send a smaller image or choose a faster model")


def check_ensemble_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise TooLarge(f"ensemble runs the network 8 times: the image is {width}x{height} = {width * height} "
                       f"pixels and the limit for ensemble is {limit} pixels (MAX_ENSEMBLE_PIXELS)")
