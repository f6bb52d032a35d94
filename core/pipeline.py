"""One upscale, end to end, as its plan (core/plan.py) lays it out: decode -> tile -> network -> assemble ->
blend -> encode."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from config import Settings
from core import cost, encoding, images, shutdown
from core.errors import OutOfDeviceMemory, TimeLimitExceeded
from core.memory import MIN_RETRY_TILE
from core.formats import OUTPUT_FORMATS
from core.encoding import ROWS_PER_BLOCK
from core.geometry import Box, OutputPlan, Size
from core.models.ensemble import self_ensemble, turned
from core.plan import Pass, Plan, plan_pass
from core.resize import bleed_into_transparency, resize
from core.tiling import Predict, run_tiles
from core.timing import Stages
from core.upload import upload_bytes

log = logging.getLogger(__name__)

# ITU-R BT.601 luma, as Pillow's convert("L") uses: turns the network's RGB back into grey.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# The layers the page blends itself, to show a new strength at once; always PNG, so no level is lost.
LAYER_FORMAT = "png"

Progress = Callable[[int, int], None]
Write = Callable[[int, int, np.ndarray], None]
# Given the side of the windows a whole image's averages are measured in: the pass's predict function (its
# averages measured, where the network has them) and the writer of its results.
Predictor = Callable[[int], tuple[Predict, Write]]


@dataclass(frozen=True)
class Result:
    data: bytes
    content_type: str
    width: int
    height: int
    model: str
    input_width: int
    input_height: int
    # With the plan's ``with_layers``: the model's output and the Lanczos enlargement, each as PNG bytes.
    layers: dict[str, bytes] | None = None
    stages: Stages = field(default_factory=Stages)


@dataclass(frozen=True)
class Layers:
    """The two pictures ``strength`` mixes, at the output's size; None where the strength does not need it."""

    model: np.ndarray | None
    lanczos: np.ndarray | None
    alpha: np.ndarray | None


@dataclass
class NextCall:
    """The estimate of the network's next call, in seconds, that the shutdown check weighs: each try of a pass
    sets it for the windows it runs a call, so that after an out-of-memory retry (fewer windows a call, or
    smaller tiles) it follows the calls actually run, not the larger ones that failed."""

    seconds: float = 0.0


# Told the network's seconds still to run, from now: its inference slot's expected end (core/admission.py).
ExpectEnd = Callable[[float], None]


def _no_one_told(seconds: float) -> None:
    """Where no slot waits on the request's end."""


@dataclass(frozen=True)
class Work:
    """What the request runs with: its plan, the settings, the clock of its stages, its next call's estimate and
    who hears of the seconds left (``expect_end``)."""

    plan: Plan
    settings: Settings
    stages: Stages
    next_call: NextCall = field(default_factory=NextCall)
    expect_end: ExpectEnd = _no_one_told


@dataclass
class TileCount:
    """The request's tiles done of its total, across its passes. A pass run again with smaller tiles after an
    out-of-memory error has more tiles than planned: the total grows with it, so that the time limit and the
    shutdown check, which act only while tiles remain, keep acting."""

    report: Progress
    total: int
    done_before: int = 0  # the tiles of the passes finished

    def in_pass(self, planned: int) -> Progress:
        """The callback of a pass planned with ``planned`` tiles, given (done, tiles) of its current try."""
        def check(done: int, tiles: int) -> None:
            total = self.total + tiles - planned
            self.report(self.done_before + done, total)
            if done == tiles:
                self.total, self.done_before = total, self.done_before + done
        return check


def run(plan: Plan, settings: Settings, on_progress: Progress | None = None, stages: Stages | None = None,
        expect_end: ExpectEnd = _no_one_told) -> Result:
    """Upscale as ``plan`` says; raises a ServiceError subclass for anything the user can fix.

    ``stages`` (new if not given, returned in the result) receives the seconds of each stage; ``expect_end`` the
    network's seconds left before each try of a pass (the first, and each after an out-of-memory retry) and after
    each call of the network."""
    work = Work(plan, settings, stages or Stages(), expect_end=expect_end)
    options, network = plan.options, plan.network
    # The clock and the hang-up check start before decoding, which can itself take a while;
    # (0, 0): no tile is known yet.
    progress = _deadline(settings, on_progress, work.next_call)
    progress(0, 0)
    with work.stages.time("decode"):
        image = images.decode_pixels(upload_bytes(plan.upload), plan.header)
    image = replace(image, alpha=encoding.alpha_for(options.output_format, image.alpha))
    image = replace(image, colour=bleed_into_transparency(image.colour, image.alpha))
    try:
        layers = _layers(image, work, progress)
    finally:
        network.release_memory()
    colour = blend(layers, options.strength)
    with work.stages.time("encode"):
        encoded = encoding.encode(colour, layers.alpha, image.icc_profile, options.output_format, options.quality,
                                  settings.png_compression_level, settings.worker_cores, image.png_colour_chunks,
                                  image.dpi)
        encoded_layers = _encoded_layers(layers, image, settings) if plan.with_layers else None
    return Result(encoded, OUTPUT_FORMATS[options.output_format][1], colour.shape[1], colour.shape[0],
                  network.name, image.width, image.height, encoded_layers, work.stages)


def _call_seconds(work: Work, step: Pass, batch: int, averages: bool) -> float:
    """The estimate of the pass's next call of ``batch`` windows, after its whole image's ``averages`` where they
    are still to measure (0 where the network's speed is not measured)."""
    network = work.plan.network
    if network.throughput is None:
        return 0.0
    return cost.call_seconds(network.throughput, step, batch, work.plan.options.ensemble, network.border,
                             averages and network.measure is not None)


def _seconds_left(work: Work, step: Pass, batch: int, done: int, averages: bool, later: tuple[Pass, ...]) -> float:
    """The estimate of the network's work left: the pass's tiles after the first ``done``, ``batch`` windows a call,
    after its whole image's ``averages`` where they are still to measure, then the ``later`` passes as planned (0
    where the network's speed is not measured)."""
    network, ensemble, planned_batch = work.plan.network, work.plan.options.ensemble, work.settings.tile_batch
    if network.throughput is None:
        return 0.0
    return (cost.pass_seconds(network.throughput, step, ensemble, batch, network.border,
                              averages and network.measure is not None, done)
            + cost.estimate_seconds(network.throughput, later, ensemble, planned_batch, network.border))


def _deadline(settings: Settings, on_progress: Progress | None, next_call: NextCall) -> Progress:
    """Per-tile callback: report progress, and stop once the request's time is up or a shutdown leaves no time
    for a call as long as the last or as ``next_call``, its estimate."""
    started = time.monotonic()
    stop_at = started + settings.request_time_limit_s
    last_call = started

    def check(done: int, total: int) -> None:
        nonlocal last_call
        if on_progress is not None:
            on_progress(done, total)
        now = time.monotonic()
        shutdown.check(done, total, now - last_call, next_call.seconds)
        last_call = now
        if done < total and time.monotonic() > stop_at:  # done == total: the work is done, keep it
            raise TimeLimitExceeded(f"stopped after {done} of {total} tiles: the request time limit is "
                                    f"{settings.request_time_limit_s:g} s (REQUEST_TIME_LIMIT_S)")
    return check


def _layers(image: images.DecodedImage, work: Work, progress: Progress) -> Layers:
    output, strength, with_layers = work.plan.output, work.plan.options.strength, work.plan.with_layers
    model = lanczos = None
    if strength > 0 or with_layers:
        model = _model_colour(image, work, progress)
    whole = (0, 0, image.width, image.height)
    with work.stages.time("resize"):
        if strength < 1 or with_layers:
            lanczos = _resampled(image.colour, whole, output.input, output.scaled, output.crop)
        alpha = None if image.alpha is None else _resampled(image.alpha[..., None], whole, output.input,
                                                            output.scaled, output.crop)[..., 0]
    return Layers(model, lanczos, alpha)


def blend(layers: Layers, strength: float) -> np.ndarray:
    """strength x model + (1 - strength) x Lanczos, rounded to the layers' levels."""
    if strength >= 1:
        return layers.model
    if strength <= 0:
        return layers.lanczos
    out = np.empty_like(layers.model)
    # A block of rows at a time: whole-image float temporaries would take several times the result's bytes.
    for start in range(0, len(out), ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        mixed = np.float32(strength) * layers.model[rows] + np.float32(1 - strength) * layers.lanczos[rows]
        out[rows] = np.rint(mixed)  # a mean of two levels never leaves their range
    return out


def _model_colour(image: images.DecodedImage, work: Work, progress: Progress) -> np.ndarray:
    """The network's passes, each on the part of the previous result (resized to the plan) that the output needs,
    then Lanczos to the output."""
    count, passes = TileCount(progress, work.plan.tile_count), work.plan.passes
    steps = iter(enumerate(passes))

    def run_pass(colour: np.ndarray) -> np.ndarray:
        index, step = next(steps)
        result = _run_network(colour, image.max_value, work, step, count.in_pass(len(step.tiles)), passes[index + 1:])
        if index + 1 < len(passes):
            # The backend keeps the buffers of the largest window it ran until told (OpenVINO): the next pass, on a
            # larger input with smaller tiles, would run beside them, where the plan reserves one pass at a time.
            work.plan.network.release_memory()
        return result
    return through_passes(image.colour, work.plan.output, run_pass, work.stages)


def through_passes(colour: np.ndarray, output: OutputPlan, run_pass: Callable[[np.ndarray], np.ndarray],
                   stages: Stages) -> np.ndarray:
    """``colour`` (the whole input) through ``run_pass`` on each pass's cut, resized between the passes and to the
    output's crop: each step makes only the part of its image that the next step reads."""
    held, held_whole = (0, 0, *output.input), output.input
    for cut in output.cuts:
        with stages.time("resize"):
            colour = _resampled(colour, held, held_whole, cut.whole, cut.box)
        colour = run_pass(colour)
        held = tuple(side * output.native_scale for side in cut.box)
        held_whole = (cut.whole[0] * output.native_scale, cut.whole[1] * output.native_scale)
    with stages.time("resize"):
        return _resampled(colour, held, held_whole, output.scaled, output.crop)


def _run_network(colour: np.ndarray, max_value: int, work: Work, step: Pass, on_progress: Progress,
                 later: tuple[Pass, ...]) -> np.ndarray:
    network, ensemble = work.plan.network, work.plan.options.ensemble
    scale = network.scale
    height, width, channels = colour.shape
    with work.stages.time("convert"):
        # One pass, one array: the same float32 quotient as astype(float32) / max, without the temporary.
        rgb = np.true_divide(colour, np.float32(max_value), dtype=np.float32)
        if channels == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        out = np.empty((height * scale, width * scale, channels), colour.dtype)

    def write(y: int, x: int, block: np.ndarray) -> None:
        levels = (block @ LUMA)[..., None] if channels == 1 else block * np.float32(max_value)
        if channels == 1:
            levels *= np.float32(max_value)
        # In place; clip before the cast: a level past the maximum would wrap around in uint8/uint16
        np.rint(levels, out=levels)
        np.clip(levels, 0, max_value, out=levels)
        out[y:y + block.shape[0], x:x + block.shape[1]] = levels

    def put(y: int, x: int, block: np.ndarray) -> None:
        out[y:y + block.shape[0], x:x + block.shape[1]] = block

    def predictor(statistics_window: int) -> tuple[Predict, Write]:
        # Colour without ensemble (which averages floats) comes back as levels where the backend rounds them.
        levels = (None if channels == 1 or ensemble
                  else network.level_predictor(rgb, max_value, statistics_window=statistics_window))
        if levels is not None:
            return levels, put
        if ensemble:
            # Each turned copy of a window with the averages of the whole image turned the same way.
            return self_ensemble(lambda k, flip: network.predictor(turned(rgb, k, flip), statistics_window)), write
        return network.predictor(rgb, statistics_window), write

    _run_fitting(predictor, rgb, scale, step, work, on_progress, later)
    return out


def _run_fitting(predictor: Predictor, rgb: np.ndarray, scale: int, step: Pass, work: Work,
                 on_progress: Progress, later: tuple[Pass, ...]) -> None:
    """Run the pass's tiles TILE_BATCH windows a call; after a call the GPU had no memory for, the rest of the pass
    with half as many windows a call, down to one, then the whole pass again in half the tile, one window a call
    (as chaiNNer's auto-split does), down to MIN_RETRY_TILE. The whole image's averages (Real-CUGAN's, 8 times
    with the ensemble), measured first, are measured again in half the window after a window of theirs had no
    memory, down to MIN_RETRY_TILE too. Each retry asks less memory than the call that failed, so what the plan
    reserved (Plan.host_bytes) still covers it; the progress counts the tiles of the current try, and the time
    limit and the shutdown check act before each call, weighing the call that try runs (``work.next_call``), and
    the request's slot expects its end from the work left before each try and after each call (with the ``later``
    passes as planned)."""
    network = work.plan.network
    batch, start, finished, measured = work.settings.tile_batch, 0, 0, None

    def counted(done: int, total: int) -> None:  # run_tiles counts the tiles from ``start``
        nonlocal finished
        finished = start + done
        work.expect_end(_seconds_left(work, step, batch, finished, False, later))
        on_progress(finished, start + total)

    while True:
        work.next_call.seconds = _call_seconds(work, step, batch, averages=measured is None)
        work.expect_end(_seconds_left(work, step, batch, start, measured is None, later))
        # Before the first window too: a client that left, or a time limit that passed, while the request decoded
        # and waited for the device (other requests' windows hold it) spends no window; after that, the check
        # after each window comes before the wait for the next.
        on_progress(start, len(step.tiles))
        try:
            measured = measured or predictor(step.averages_window)
            predict, write = measured
            run_tiles(work.stages.timed("network", predict), rgb, scale, step.tiles[start:], batch,
                      work.stages.timed("assembly", write), counted)
            return
        except OutOfDeviceMemory as error:
            if measured is None:
                step = replace(step, averages_window=_smaller_statistics_window(
                    step.averages_window, max(step.width, step.height), error))
                continue
            failed_call = min(batch, len(step.tiles) - finished)
            if failed_call > 1:
                batch, start = _fewer_windows(failed_call, error), finished
            else:
                tile = _smaller_tile(step.tile, max(step.width, step.height), error)
                batch, start, finished, step = 1, 0, 0, plan_pass(network, step.width, step.height, tile,
                                                                  step.averages_window)


def _fewer_windows(failed_call: int, error: OutOfDeviceMemory) -> int:
    """Half the windows of a call the GPU had no memory for: the tiles stay, and those done are kept."""
    batch = failed_call // 2
    log.warning("%s: running the rest of the pass with %d window%s a call", error.message, batch,
                "s" * (batch > 1))
    return batch


def _smaller_tile(tile: int, longest: int, error: OutOfDeviceMemory) -> int:
    """Half the tile after a single window the GPU had no memory for, as chaiNNer's auto-split does, but no less
    than MIN_RETRY_TILE; a 503 once one window of tiles of that size had no room either (the worker goes on
    serving).

    A tile past the image's ``longest`` side ran it whole, as that side's tile would: the half is of that side,
    since half of a larger tile would run the very window that had no room again."""
    smaller = _half_side(tile, longest, error, "tiles")
    log.warning("%s: running the pass again with tiles of %d px, one window a call", error.message, smaller)
    return smaller


def _smaller_statistics_window(window: int, longest: int, error: OutOfDeviceMemory) -> int:
    """Half the side of the windows a whole image's averages are measured in, after one the GPU had no memory for
    (``_smaller_tile``'s bounds); the averages then come from more, smaller windows, as Real-CUGAN's own runner
    takes them over its tiles."""
    smaller = _half_side(window, longest, error, "windows of the image's averages")
    log.warning("%s: measuring the image's averages again in windows of %d px", error.message, smaller)
    return smaller


def _half_side(side: int, longest: int, error: OutOfDeviceMemory, what: str) -> int:
    """Half the side that ran (no more than the image's ``longest`` side), no less than MIN_RETRY_TILE; a 503 where
    the side that ran was that already."""
    ran = min(side, longest)
    if ran <= MIN_RETRY_TILE:
        raise OutOfDeviceMemory(f"{error.message}, even with {what} of {ran} px, one window a call; retry later"
                                ) from error
    return max(ran // 2, MIN_RETRY_TILE)


def _resampled(pixels: np.ndarray, held: Box, held_whole: Size, whole: Size, box: Box) -> np.ndarray:
    """The ``box`` of the image of ``held_whole`` size resized (Lanczos) to ``whole``, made from ``pixels``, which
    are its part ``held`` (a box that holds all the resample reads, as core/geometry.py plans the cuts): the same
    pixels as the whole resize, cut."""
    left, top, right, bottom = box
    # A side of the same length is cut, not resampled: as for the whole image, whose resize leaves that side be.
    same_width, same_height = held_whole[0] == whole[0], held_whole[1] == whole[1]
    if same_width:
        pixels, held = pixels[:, left - held[0]:right - held[0]], (left, held[1], right, held[3])
    if same_height:
        pixels, held = pixels[top - held[1]:bottom - held[1]], (held[0], top, held[2], bottom)
    if same_width and same_height:
        return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    # Each edge as one division of whole numbers: exact where it falls on a pixel (the image's end among them,
    # which Pillow's box must not pass)
    region = tuple(edge * held_whole[axis] / whole[axis] - held[axis]
                   for edge, axis in zip(box, (0, 1, 0, 1)))
    return resize(pixels, (right - left, bottom - top), region)


def _encoded_layers(layers: Layers, image: images.DecodedImage, settings: Settings) -> dict[str, bytes]:
    return {name: encoding.encode(pixels, layers.alpha, image.icc_profile, LAYER_FORMAT, 100,
                                  settings.png_compression_level, settings.worker_cores, image.png_colour_chunks,
                                  image.dpi)
            for name, pixels in (("model", layers.model), ("lanczos", layers.lanczos))}
