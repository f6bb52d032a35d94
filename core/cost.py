"""What an upscale will cost, known before any work: refuse at once what cannot finish in time.

The estimate is the network's measured speed (core/models/speed.py) over the plan's own tiles
(core/plan.py), so it counts exactly the windows that would run, aligned as the network needs, in the calls
that run them (TILE_BATCH windows each), and the windows of each pass's whole-image averages where the network
has them.
"""
from __future__ import annotations

from collections.abc import Iterable

from core.errors import EnsembleTooLarge, Reason, TooLarge
from core.geometry import OutputPlan
from core.memory import run_pixels, run_side
from core.models.border import Border
from core.models.speed import Throughput
from core.plan import Pass

# Runs of the network per window with ensemble=true (4 rotations x 2 flips).
ENSEMBLE_RUNS = 8


class TooCostly(TooLarge):
    """The request would run past the time limit: refused before it queues."""

    reason = Reason.TIME_ESTIMATE


def estimate_seconds(throughput: Throughput, passes: Iterable[Pass], ensemble: bool, batch: int,
                     border: Border | None = None) -> float:
    """Seconds the network would take over every pass's tiles, ``batch`` windows a call, each window as it runs
    (with the ``border`` its runner extends it by), 8 times each with the ``ensemble``, whose every turn of the
    image measures its own averages."""
    return sum(pass_seconds(throughput, step, ensemble, batch, border) for step in passes)


def pass_seconds(throughput: Throughput, step: Pass, ensemble: bool, batch: int, border: Border | None = None,
                 averages: bool = True, done: int = 0) -> float:
    """Seconds of the pass's tiles after the first ``done``, ``batch`` windows a call (``estimate_seconds``), and
    first of its whole image's averages where ``averages``: what is left of a pass once it runs, after an
    out-of-memory retry included (fewer windows a call, smaller tiles or averages windows than the plan's)."""
    windows = len(step.tiles) - done
    seconds = throughput.seconds(-(-windows // batch), windows * run_pixels(*step.window_shape, border))
    if averages:
        seconds += _averages_seconds(throughput, step, border)
    return (ENSEMBLE_RUNS if ensemble else 1) * seconds


def call_seconds(throughput: Throughput, step: Pass, batch: int, ensemble: bool, border: Border | None = None,
                 averages: bool = False) -> float:
    """Seconds of one call of ``batch`` of the pass's windows (8 runs each with the ``ensemble``), and first of its
    whole image's averages where ``averages``: what the shutdown check weighs before each call, for the windows the
    call actually runs (fewer or smaller after an out-of-memory retry than the plan's)."""
    windows = min(batch, len(step.tiles))
    seconds = throughput.seconds(1, windows * run_pixels(*step.window_shape, border))
    if averages:
        seconds += _averages_seconds(throughput, step, border)
    return (ENSEMBLE_RUNS if ensemble else 1) * seconds


def _averages_seconds(throughput: Throughput, step: Pass, border: Border | None) -> float:
    """Seconds of measuring the pass's whole image's averages in its averages windows, for a network that has them
    (else 0)."""
    if throughput.statistics is None:
        return 0.0
    side = step.averages_window
    return throughput.statistics.seconds(statistics_windows(step.width, step.height, side),
                                         _statistics_run(step.height, side, border)
                                         * _statistics_run(step.width, side, border))


def statistics_windows(width: int, height: int, side: int) -> int:
    """The windows of ``side`` a whole image's averages are measured in (core/models/runtime.py), a quarter turn's
    alike."""
    return -(-width // side) * -(-height // side)


def _statistics_run(length: int, side: int, border: Border | None) -> int:
    """The side lengths, summed, that a side's windows of ``side`` run at: the windows of a whole image's averages
    are a grid, so the pixels they run are the product of the two sides' sums."""
    whole, rest = divmod(length, side)
    return whole * run_side(side, border) + (run_side(rest, border) if rest else 0)


def check_fits(seconds: float, limit_s: float, model: str, width: int, height: int, ensemble: bool) -> None:
    """413 at once, before queueing, for a request the time limit would stop anyway."""
    if seconds <= limit_s:
        return
    how = f"model {model}" + (" with ensemble (8 passes)" if ensemble else "")
    raise TooCostly(f"the {width}x{height} image would take about {seconds:.0f} s with {how} on this server, "
                    f"past the request time limit of {limit_s:g} s (REQUEST_TIME_LIMIT_S); "
                    f"send a smaller image or choose a faster model")


def check_ensemble_pixels(output: OutputPlan, limit: int) -> None:
    """The pixels the ensemble's first pass runs 8 times: the image's, or with fit=cover the part the box needs."""
    width, height = output.pass_inputs[0]
    if width * height <= limit:
        return
    what = (f"the image is {width}x{height}" if (width, height) == output.input else
            "the part of the {}x{} image that the {}x{} box needs is ".format(*output.input, *output.output)
            + f"{width}x{height}")
    raise EnsembleTooLarge(f"ensemble runs the network 8 times: {what} = {width * height} pixels and the limit for "
                           f"ensemble is {limit} pixels (MAX_ENSEMBLE_PIXELS)")
