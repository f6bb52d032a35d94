"""What an upscale will cost, known before any work: refuse at once what cannot finish in time.

The estimate is the network's measured speed (core/models/speed.py) over the plan's own tiles
(core/plan.py), so it counts exactly the windows that would run, aligned as the network needs.
"""
from __future__ import annotations

from collections.abc import Iterable

from core.errors import TooLarge
from core.models.speed import Throughput
from core.tiling import Tile

# Runs of the network per window with ensemble=true (4 rotations x 2 flips).
ENSEMBLE_RUNS = 8


class TooCostly(TooLarge):
    """The request would run past the time limit: refused before it queues."""


def estimate_seconds(throughput: Throughput, passes: Iterable[tuple[Tile, ...]], ensemble: bool) -> float:
    """Seconds the network would take over every pass's tiles."""
    runs = ENSEMBLE_RUNS if ensemble else 1
    total = 0.0
    for tiles in passes:
        window_height, window_width = tiles[0].window_shape
        total += throughput.seconds(len(tiles), len(tiles) * window_height * window_width)
    return runs * total


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
