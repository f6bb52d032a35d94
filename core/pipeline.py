"""One upscale, end to end: decode -> plan the sizes -> tile -> network -> blend -> assemble -> encode."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from config import Settings
from core import images, shutdown
from core.errors import OutOfDeviceMemory, TimeLimitExceeded, TooLarge
from core.geometry import OutputPlan, Size, plan_output
from core.models.ensemble import self_ensemble
from core.models.runtime import Network
from core.options import UpscaleOptions
from core.tiling import plan_tiles, run_tiled
from core.timing import Stages

log = logging.getLogger(__name__)

# Below this the retries after a GPU's out-of-memory error stop: smaller tiles would spend more on their
# margins (up to 32 px a side) than on their centres.
MIN_RETRY_TILE = 64
# ITU-R BT.601 luma, as Pillow's convert("L") uses: turns the network's RGB back into grey.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# The layers the page blends itself, to show a new strength at once; always PNG, so no level is lost.
LAYER_FORMAT = "png"

Progress = Callable[[int, int], None]
# The tile side for a network on an image of (height, width): TILE_SIZE, or what MEMORY_BUDGET_MB allows.
TileSizer = Callable[[Network, int, int], int]


@dataclass(frozen=True)
class Result:
    data: bytes
    content_type: str
    width: int
    height: int
    model: str
    input_width: int
    input_height: int
    # With ``with_layers``: the model's output and the Lanczos enlargement, each as PNG bytes.
    layers: dict[str, bytes] | None = None
    stages: Stages = field(default_factory=Stages)


@dataclass(frozen=True)
class Layers:
    """The two pictures ``strength`` mixes, at the output's size; None where the strength does not need it."""

    model: np.ndarray | None
    lanczos: np.ndarray | None
    alpha: np.ndarray | None


@dataclass(frozen=True)
class Work:
    """What the request runs with: its network, how its tiles are sized, and the clock of its stages."""

    network: Network
    settings: Settings
    tile_size: TileSizer
    stages: Stages


def upscale(data: bytes, options: UpscaleOptions, network: Network, settings: Settings, tile_size: TileSizer,
            on_progress: Progress | None = None, with_layers: bool = False, stages: Stages | None = None) -> Result:
    """Upscale an encoded image with ``network``; raises a ServiceError subclass for anything the user can fix.

    ``stages`` (new if not given, returned in the result) receives the seconds of each stage."""
    work = Work(network, settings, tile_size, stages or Stages())
    # The clock and the hang-up check start before decoding, which can itself take a while;
    # (0, 0): no tile is known yet.
    progress = _deadline(settings, on_progress)
    progress(0, 0)
    with work.stages.time("decode"):
        image = images.decode(data, settings.max_input_pixels)
    plan = plan_output(image.width, image.height, options, network.scale)
    image = images.fit_output(image, options.output_format, plan.output)
    check_sizes(plan, settings.max_output_pixels)
    try:
        layers = _layers(image, plan, work, options, progress, with_layers)
    finally:
        network.release_memory()
    colour = blend(layers, options.strength)
    with work.stages.time("encode"):
        encoded = images.encode(colour, layers.alpha, image.icc_profile, options.output_format, options.quality,
                                settings.png_compression_level, settings.worker_cores)
        encoded_layers = _encoded_layers(layers, image.icc_profile, settings) if with_layers else None
    return Result(encoded, images.OUTPUT_FORMATS[options.output_format][1], colour.shape[1], colour.shape[0],
                  network.name, image.width, image.height, encoded_layers, work.stages)


def check_sizes(plan: OutputPlan, max_output_pixels: int) -> None:
    """Every image the work makes (each pass's result, the enlarged image) must fit MAX_OUTPUT_PIXELS."""
    made = [(f"the model's {plan.native_scale}x result", size) for size in plan.pass_outputs]
    made.append(("the output", plan.scaled))
    for what, (width, height) in made:
        if width * height > max_output_pixels:
            raise TooLarge(f"{what} would be {width}x{height} = {width * height} pixels; the limit is "
                           f"{max_output_pixels} output pixels (MAX_OUTPUT_PIXELS; input {plan.input[0]}x{plan.input[1]})")


def tile_count(plan: OutputPlan, network: Network, tile_size: TileSizer) -> int:
    """Tiles of every pass together: the total the progress counts to."""
    return sum(len(plan_tiles(height, width, tile_size(network, height, width), network.margin))
               for width, height in plan.pass_inputs)


def _deadline(settings: Settings, on_progress: Progress | None) -> Progress:
    """Per-tile callback: report progress, and stop once the request's time is up."""
    stop_at = time.monotonic() + settings.request_time_limit_s

    def check(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)
        shutdown.check(done, total)
        if done < total and time.monotonic() > stop_at:  # done == total: the work is done, keep it
            raise TimeLimitExceeded(f"stopped after {done} of {total} tiles: the request time limit is "
                                    f"{settings.request_time_limit_s:.0f} s")
    return check


def _layers(image: images.DecodedImage, plan: OutputPlan, work: Work, options: UpscaleOptions,
            progress: Progress, with_layers: bool) -> Layers:
    model = lanczos = None
    if options.strength > 0 or with_layers:
        model = _crop(_model_colour(image, plan, work, options.ensemble, progress), plan)
    with work.stages.time("resize"):
        if options.strength < 1 or with_layers:
            lanczos = _crop(images.resize(image.colour, plan.scaled), plan)
        alpha = None if image.alpha is None else _crop(images.resize_channel(image.alpha, plan.scaled), plan)
    return Layers(model, lanczos, alpha)


def blend(layers: Layers, strength: float) -> np.ndarray:
    """strength x model + (1 - strength) x Lanczos, rounded to the layers' levels."""
    if strength >= 1:
        return layers.model
    if strength <= 0:
        return layers.lanczos
    mixed = strength * layers.model.astype(np.float32) + (1 - strength) * layers.lanczos.astype(np.float32)
    return np.rint(mixed).astype(layers.model.dtype)  # a mean of two levels never leaves their range


def _crop(pixels: np.ndarray, plan: OutputPlan) -> np.ndarray:
    left, top, right, bottom = plan.crop
    if (right - left, bottom - top) == (pixels.shape[1], pixels.shape[0]):
        return pixels
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def _model_colour(image: images.DecodedImage, plan: OutputPlan, work: Work, ensemble: bool,
                  progress: Progress) -> np.ndarray:
    """The network's passes, each on the previous result resized to the plan, then Lanczos to the size asked."""
    total = tile_count(plan, work.network, work.tile_size)
    done_before = 0
    colour = image.colour
    for size in plan.pass_inputs:
        with work.stages.time("resize"):
            colour = _resized(colour, size)
        offset = done_before
        colour = _run_network(colour, image.max_value, work, ensemble,
                              lambda done, _tiles, offset=offset: progress(offset + done, total))
        done_before += len(plan_tiles(size[1], size[0], work.tile_size(work.network, size[1], size[0]),
                                      work.network.margin))
    with work.stages.time("resize"):
        return _resized(colour, plan.scaled)


def _run_network(colour: np.ndarray, max_value: int, work: Work, ensemble: bool, on_progress: Progress) -> np.ndarray:
    network, stages = work.network, work.stages
    scale = network.scale
    height, width, channels = colour.shape
    with stages.time("convert"):
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

    predict = network.predictor(rgb)
    predict = self_ensemble(predict) if ensemble else predict
    tile = work.tile_size(network, height, width)
    while True:
        try:
            run_tiled(stages.timed("network", predict), rgb, scale, tile, network.margin, work.settings.tile_batch,
                      stages.timed("assembly", write), on_progress, network.alignment)
            return out
        except OutOfDeviceMemory as error:
            tile = _smaller_tile(tile, error)


def _smaller_tile(tile: int, error: OutOfDeviceMemory) -> int:
    """Half the tile after a window the GPU had no memory for, as chaiNNer's auto-split does; a 503 once the
    half would fall below MIN_RETRY_TILE (the worker goes on serving)."""
    if tile // 2 < MIN_RETRY_TILE:
        raise OutOfDeviceMemory(f"{error.message}, even with tiles of {tile} px; retry later") from error
    log.warning("%s: running the pass again with tiles of %d px", error.message, tile // 2)
    return tile // 2


def _resized(colour: np.ndarray, size: Size) -> np.ndarray:
    """Lanczos to ``size`` (width, height), or the pixels as they are when they have that size."""
    if (colour.shape[1], colour.shape[0]) == size:
        return colour
    return images.resize(colour, size)


def _encoded_layers(layers: Layers, icc_profile: bytes | None, settings: Settings) -> dict[str, bytes]:
    return {name: images.encode(pixels, layers.alpha, icc_profile, LAYER_FORMAT, 100, settings.png_compression_level,
                                settings.worker_cores)
            for name, pixels in (("model", layers.model), ("lanczos", layers.lanczos))}
