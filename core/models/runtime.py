"""A loaded network as the pipeline sees it, whichever backend (core/backends) runs it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.memory import STATISTICS_WINDOW
from core.models.speed import Throughput
from core.models.border import Border

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Network:
    """What the pipeline needs of a model: a function on float batches, its scale and its context margin."""

    name: str
    run: Predict
    margin: int
    # Output pixels per input pixel along each side (the registry checks it when warming the network up).
    scale: int = 4
    # The published network's parameter count, where the model served is a rewritten form of it.
    parameters: int | None = None
    border: Border | None = None
    # For a graph whose global poolings should see the whole image (Real-CUGAN's squeeze-excitation):
    # the function that measures those averages; ``run`` then takes them as extra inputs.
    measure: Predict | None = None
    # The arithmetic the backend runs the network in: f32, bf16 or fp16 (core/models/precision.py).
    precision: str = "f32"
    # This machine's measured speed of the network, set when the registry loads it (core/cost.py).
    throughput: Throughput | None = None

    @property
    def alignment(self) -> int:
        """Tiles must start at multiples of this to compute what the whole image computes."""
        return self.border.multiple if self.border is not None else 1

    def release_memory(self) -> None:
        """Give back what the backend holds between requests, so that one model's windows do not add to
        the next request's (the memory budget counts one model's windows at a time)."""
        _release(self.run)
        _release(self.measure)

    def plan_rerun(self, room: int, f32_bytes_per_window_pixel: int) -> None:
        """Hold the f32 reruns of the backend's 16-bit windows (the PyTorch runner's, on a GPU) to ``room`` bytes of
        the device, their windows counted at ``f32_bytes_per_window_pixel``; a backend that reruns nothing ignores
        it."""
        for function in (self.run, self.measure):
            plan_rerun(function, room, f32_bytes_per_window_pixel)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, scale * h, scale * w, 3) RGB in [0, 1], each image on its own."""
        averages = [] if self.measure is None else self._measure_windows(batch)
        return _clipped(self._run(self.run, batch, averages))

    def predictor(self, image: np.ndarray, statistics_window: int = STATISTICS_WINDOW) -> Predict:
        """``predict`` for tiles of ``image`` (H, W, 3): a graph's global averages come from the whole image
        (measured in windows of ``statistics_window``), so that every tile is scaled alike and tiles stay
        seam-free."""
        if self.measure is None:
            return self.predict
        averages = self._averages_of(image, statistics_window)
        return lambda batch: _clipped(self._run(self.run, batch, _repeated(averages, len(batch))))

    def level_predictor(self, image: np.ndarray, max_value: int,
                        statistics_window: int = STATISTICS_WINDOW) -> Predict | None:
        """``predictor`` giving integer levels of ``max_value`` (uint8 for 255, uint16 for 65535), rounded where
        the network ran, as the pipeline rounds the float output; None where the backend cannot (only the
        PyTorch runner can: from a GPU, the copy back is then a quarter or half of the float one)."""
        levels = getattr(self.run, "levels", None)
        if levels is None:
            return None
        averages = [] if self.measure is None else self._averages_of(image, statistics_window)
        return lambda batch: self._run(lambda inputs: levels(inputs, max_value), batch,
                                       _repeated(averages, len(batch)))

    def _run(self, run: Predict, batch: np.ndarray, averages: list[np.ndarray]) -> np.ndarray:
        height, width = batch.shape[1:3]
        if self.border is not None:
            batch = np.ascontiguousarray(self.border.extend(batch))
        return run([batch, *averages] if averages else batch)[:, :height * self.scale, :width * self.scale]

    def _averages_of(self, image: np.ndarray, window: int) -> list[np.ndarray]:
        # The memory budget counts the larger of the averages' window and the tiles' (core/memory.py), never both:
        # an earlier pass's tiles' buffers are given back before the averages, and theirs before the tiles.
        _release(self.run)
        averages = self._image_averages(image, window)
        _release(self.measure)
        return averages

    def _measure_windows(self, batch: np.ndarray) -> list[np.ndarray]:
        """Each global pooling's (N, 1, 1, C) averages for each image of the batch as the graph computes them."""
        if self.border is not None:
            batch = np.ascontiguousarray(self.border.extend(batch))
        measured = self.measure(batch)
        return measured if isinstance(measured, list) else [measured]

    def _image_averages(self, image: np.ndarray, side: int) -> list[np.ndarray]:
        """The averages over the whole image: exact for an image within one window of ``side``, else the
        area-weighted mean over windows of that side (Real-CUGAN's runner likewise averages over tiles)."""
        height, width = image.shape[:2]
        totals: list[np.ndarray] | None = None
        for top in range(0, height, side):
            for left in range(0, width, side):
                window = image[top:top + side, left:left + side]
                weight = window.shape[0] * window.shape[1] / (height * width)
                averages = [weight * average for average in self._measure_windows(window[None])]
                totals = averages if totals is None else [t + a for t, a in zip(totals, averages)]
        return totals


def _clipped(result: np.ndarray) -> np.ndarray:
    """In [0, 1]; in place where the backend handed over its own copy (OpenVINO's, TensorFlow's numpy())."""
    return np.clip(result, 0.0, 1.0, out=result if result.flags.writeable else None)


def _repeated(averages: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The whole image's averages, once for each window of a batch."""
    return [np.repeat(average, count, axis=0) for average in averages]


def f32_copy_bytes(function: Predict | None) -> int:
    """The weights of the f32 copy that ``function`` (a network's ``run`` or ``measure``) places to run an
    overflowed 16-bit window again; 0 where it reruns nothing."""
    return getattr(function, "f32_copy_bytes", 0)


def plan_rerun(function: Predict | None, room: int, f32_bytes_per_window_pixel: int) -> None:
    """``Network.plan_rerun`` for one of its functions: those of a backend that reruns nothing ignore it."""
    plan = getattr(function, "plan_rerun", None)
    if plan is not None:
        plan(room, f32_bytes_per_window_pixel)


def _release(function: Predict | None) -> None:
    """The buffers of a backend that keeps them between calls (OpenVINO's), given back."""
    release = getattr(function, "release_memory", None)
    if release is not None:
        release()
