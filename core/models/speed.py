"""A network's speed on this machine, measured when it loads: what the cost model (core/cost.py) estimates from.

A model's time is a fixed cost per network call (one window of tiles) plus a cost per window pixel. Both are
measured from two window sizes, so the estimate covers what the pixel count alone misses: a 1 x 4,000,000
image is thousands of calls on tiny windows. A network whose global averages come from the whole image
(Real-CUGAN's) runs its tiles with the averages given, after a pass of its own that measures them in windows of
at most STATISTICS_WINDOW (core/memory.py): the two are timed apart, as their windows differ.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from core.memory import STATISTICS_WINDOW, run_pixels
from core.tiling import plan_tiles

if TYPE_CHECKING:
    from core.models.border import Border
    from core.models.runtime import Network

# Side of the small window of the two measured; the large one is a tile of TILE_SIZE with its margins,
# or, where the memory budget sizes the tiles, of MEASURED_TILE (the cost is linear in the pixels beyond it).
SMALL_WINDOW = 16
MEASURED_TILE = 128
# Timed calls per window size, of which the median counts: a neighbour that takes the cores during one call (or a
# garbage collection) would otherwise make the per-pixel cost, a difference of two single calls, wildly wrong,
# and every estimate with it. Odd, so that the median is one call's time; few, as every network of every model is
# measured at load.
TIMED_CALLS = 3


@dataclass(frozen=True)
class Throughput:
    """Seconds of one network call on this machine: ``per_call_s + per_pixel_s * pixels run`` (a window's, with
    the border its runner extends it by: ``memory.run_pixels``)."""

    per_call_s: float
    per_pixel_s: float
    # The pass that measures a whole image's averages, per call of its windows; None where the network has none.
    statistics: Throughput | None = None

    def seconds(self, windows: int, window_pixels: int) -> float:
        return windows * self.per_call_s + window_pixels * self.per_pixel_s


def measure(predict: Callable[[np.ndarray], np.ndarray], large_window: int,
            clock: Callable[[], float] = time.perf_counter, border: Border | None = None) -> Throughput:
    """Time calls at two window sizes: each size's median of TIMED_CALLS, after a first, untimed call that
    compiles its shape. The cost is per pixel run, ``border`` included: Real-CUGAN's 14 to 19 px a side make a
    64-px window run at 102 px, which a cost per window pixel, fitted at 16 and ~600 px, put 30 % lower."""
    small, large = (_timed_call(predict, side, clock) for side in (SMALL_WINDOW, large_window))
    small_pixels, large_pixels = (run_pixels(side, side, border) for side in (SMALL_WINDOW, large_window))
    per_pixel = max(0.0, (large - small) / (large_pixels - small_pixels))
    return Throughput(max(0.0, small - per_pixel * small_pixels), per_pixel)


def measure_network(network: Network, large_window: int,
                    clock: Callable[[], float] = time.perf_counter) -> Throughput:
    """``measure`` of the network's tiles as the pipeline runs them, and of its averages' pass where it has one."""
    if network.measure is None:
        return measure(network.predict, large_window, clock, network.border)
    # The tiles run with averages known (any image's will do for the time); the averages of a window of at most
    # STATISTICS_WINDOW take one call of their own.
    tiles = measure(network.predictor(np.zeros((SMALL_WINDOW, SMALL_WINDOW, 3), np.float32)), large_window, clock,
                    network.border)
    statistics = measure(lambda batch: network.predictor(batch[0]), min(large_window, STATISTICS_WINDOW), clock,
                         network.border)
    return replace(tiles, statistics=statistics)


def window_side(tile_size: int | None, margin: int) -> int:
    """The side of the windows the pipeline runs for a large image (tiles of TILE_SIZE, or MEASURED_TILE)."""
    tile = tile_size or MEASURED_TILE
    side = 4 * tile
    return plan_tiles(side, side, tile, margin)[0].window_shape[0]


def _timed_call(predict: Callable[[np.ndarray], np.ndarray], side: int, clock: Callable[[], float]) -> float:
    """The median seconds of a call on a ``side`` x ``side`` window."""
    window = np.zeros((1, side, side, 3), np.float32)
    predict(window)
    return statistics.median(_seconds(predict, window, clock) for _ in range(TIMED_CALLS))


def _seconds(predict: Callable[[np.ndarray], np.ndarray], window: np.ndarray, clock: Callable[[], float]) -> float:
    started = clock()
    predict(window)
    return clock() - started
