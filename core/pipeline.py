"""One upscale, end to end: decode -> tile -> network -> assemble -> encode."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from config import Settings
from core import images, shutdown
from core.errors import InvalidInput, TimeLimitExceeded, TooLarge
from core.models.ensemble import self_ensemble
from core.models.registry import ModelRegistry
from core.tiling import run_tiled

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


def upscale(data: bytes, options: UpscaleOptions, registry: ModelRegistry, settings: Settings,
            on_progress: Progress | None = None) -> Result:
    """Upscale an encoded image; raises a ServiceError subclass for anything the user can fix."""
    options.validate()
    model_name = options.model or settings.default_model
    network = registry.get(model_name)
    # The clock and the hang-up check start before decoding, which can itself take a while;
    # (0, 0): no tile is known yet.
    check = _deadline(settings, on_progress)
    check(0, 0)
    image = images.decode(data, settings.max_input_pixels)
    size = (image.width * options.scale, image.height * options.scale)
    image = images.fit_output(image, options.output_format, size)
    _check_output_size(image, settings.max_output_pixels)
    colour = _upscale_colour(image, network, settings, options.ensemble, check)
    colour = _rescale(colour, size)
    alpha = None if image.alpha is None else images.resize_channel(image.alpha, size)
    encoded = images.encode(colour, alpha, image.icc_profile, options.output_format, options.quality)
    return Result(encoded, images.OUTPUT_FORMATS[options.output_format][1], colour.shape[1], colour.shape[0],
                  model_name, image.width, image.height)


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
        shutdown.check(done, total)
        if done < total and time.monotonic() > stop_at:  # done == total: the work is done, keep it
            raise TimeLimitExceeded(f"stopped after {done} of {total} tiles: the request time limit is "
                                    f"{settings.request_time_limit_s:.0f} s")
    return check


def _upscale_colour(image: images.DecodedImage, network, settings: Settings, ensemble: bool,
                    on_progress: Progress) -> np.ndarray:
    scale = network.scale
    channels = image.colour.shape[-1]
    rgb = image.colour.astype(np.float32) / image.max_value
    if channels == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    out = np.empty((image.height * scale, image.width * scale, channels), image.colour.dtype)

    def write(y: int, x: int, block: np.ndarray) -> None:
        if channels == 1:
            block = (block @ LUMA)[..., None]
        # clip before the cast: a level past the maximum would wrap around in uint8/uint16
        levels = np.clip(np.rint(block * image.max_value), 0, image.max_value)
        out[y:y + block.shape[0], x:x + block.shape[1]] = levels

    predict = self_ensemble(network.predict) if ensemble else network.predict
    run_tiled(predict, rgb, scale, settings.tile_size, network.margin, settings.tile_batch, write, on_progress)
    return out


def _rescale(colour: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The network's result at the asked scale: a Lanczos downscale when that is below the network's."""
    if (colour.shape[1], colour.shape[0]) == size:
        return colour
    return images.resize(colour, size)

