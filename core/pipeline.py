"""One upscale, end to end: decode -> tile -> network -> assemble -> encode."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from config import Settings
from core import images
from core.errors import InvalidInput, TimeLimitExceeded, TooLarge
from core.models.ensemble import self_ensemble
from core.models.registry import ModelRegistry
from core.tiling import run_tiled
from core.timing import Stages

SCALES = (2, 3, 4)
# ITU-R BT.601 luma, as Pillow's convert("L") uses: turns the network's RGB back into grey.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class UpscaleOptions:
    model: str | None = None
    scale: int = 4
    output_format: str = "png"
    quality: int = 90
    ensemble: bool = False

    def validate(self) -> None:
        if self.scale not in SCALES:
            raise InvalidInput(f"scale must be one of {SCALES}, not {self.scale}")
        if self.output_format not in images.OUTPUT_FORMATS:
            raise InvalidInput(f"format must be one of {sorted(images.OUTPUT_FORMATS)}, not {self.output_format!r}")
        if not 1 <= self.quality <= 100:
            raise InvalidInput(f"quality must be between 1 and 100, not {self.quality}")


@dataclass(frozen=True)
class Result:
    data: bytes
    content_type: str
    width: int
    height: int
    model: str
    input_width: int
    input_height: int
    stages: Stages = field(default_factory=Stages)


def upscale(data: bytes, options: UpscaleOptions, registry: ModelRegistry, settings: Settings,
            on_progress: Progress | None = None, stages: Stages | None = None) -> Result:
    """Upscale an encoded image; raises a ServiceError subclass for anything the user can fix.

    ``stages`` (new if not given, returned in the result) receives the seconds of each stage."""
    options.validate()
    stages = stages or Stages()
    model_name = options.model or settings.default_model
    network = registry.get(model_name)
    with stages.time("decode"):
        image = images.decode(data, settings.max_input_pixels)
    size = (image.width * options.scale, image.height * options.scale)
    image = images.fit_output(image, options.output_format, size)
    _check_output_size(image, settings.max_output_pixels)
    tile = registry.tile_size(model_name, image.height, image.width)
    try:
        colour = _upscale_colour(image, network, settings, tile, options.ensemble, _deadline(settings, on_progress),
                                 stages)
    finally:
        network.release_memory()
    with stages.time("rescale"):
        colour = _rescale(colour, size)
        alpha = None if image.alpha is None else images.resize_channel(image.alpha, size)
    with stages.time("encode"):
        encoded = images.encode(colour, alpha, image.icc_profile, options.output_format, options.quality,
                                settings.png_compression_level)
    return Result(encoded, images.OUTPUT_FORMATS[options.output_format][1], colour.shape[1], colour.shape[0],
                  model_name, image.width, image.height, stages)


def _check_output_size(image: images.DecodedImage, max_output_pixels: int) -> None:
    width, height = image.width * 4, image.height * 4
    if width * height > max_output_pixels:
        raise TooLarge(f"the 4x output would be {width}x{height} = {width * height} pixels; "
                       f"the limit is {max_output_pixels} output pixels (MAX_OUTPUT_PIXELS; input {image.width}x{image.height})")


def _deadline(settings: Settings, on_progress: Progress | None) -> Progress:
    """Per-tile callback: report progress, and stop once the request's time is up."""
    stop_at = time.monotonic() + settings.request_time_limit_s

    def check(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)
        if done < total and time.monotonic() > stop_at:
            raise TimeLimitExceeded(f"stopped after {done} of {total} tiles: the request time limit is "
                                    f"{settings.request_time_limit_s:.0f} s")
    return check


def _upscale_colour(image: images.DecodedImage, network, settings: Settings, tile: int, ensemble: bool,
                    on_progress: Progress, stages: Stages) -> np.ndarray:
    scale = network.scale
    channels = image.colour.shape[-1]
    with stages.time("convert"):
        # One pass, one array: the same float32 quotient as astype(float32) / max, without the temporary.
        rgb = np.true_divide(image.colour, np.float32(image.max_value), dtype=np.float32)
        if channels == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        out = np.empty((image.height * scale, image.width * scale, channels), image.colour.dtype)

    def write(y: int, x: int, block: np.ndarray) -> None:
        levels = (block @ LUMA)[..., None] if channels == 1 else block * np.float32(image.max_value)
        if channels == 1:
            levels *= np.float32(image.max_value)
        # In place; clip before the cast: a level past the maximum would wrap around in uint8/uint16
        np.rint(levels, out=levels)
        np.clip(levels, 0, image.max_value, out=levels)
        out[y:y + block.shape[0], x:x + block.shape[1]] = levels

    predict = self_ensemble(network.predict) if ensemble else network.predict
    run_tiled(stages.timed("network", predict), rgb, scale, tile, network.margin, settings.tile_batch,
              stages.timed("assembly", write), on_progress)
    return out


def _rescale(colour: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The network's result at the asked scale: a Lanczos downscale when that is below the network's."""
    if (colour.shape[1], colour.shape[0]) == size:
        return colour
    return images.resize(colour, size)

