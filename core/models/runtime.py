"""A loaded network ready to run on one of the inference backends.

Backends (setting ``BACKEND``):

- ``tensorflow``: the Keras model in a ``tf.function``; the reference.
- ``xla``: the same with XLA compilation (recompiles for every new tile shape).
- ``openvino``: the model converted once to OpenVINO and run by its CPU plugin;
  the fastest here, held to the reference by tests/core/test_backends.py.

An operator's ONNX model (MODELS_DIR) has no Keras form: OpenVINO reads and runs the file itself.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.cost import Throughput
from core.models.border import Border

log = logging.getLogger(__name__)

# Side of the windows over which a graph's global averages are measured for a whole image (memory bound).
STATISTICS_WINDOW = 256
BACKENDS = ("tensorflow", "xla", "openvino")

Predict = Callable[[np.ndarray], np.ndarray]


def input_signature(model: keras.Model) -> list[tf.TensorSpec]:
    """One float32 spec per model input, batch and image sides left open."""
    return [tf.TensorSpec([None, *tensor.shape[1:]], tf.float32) for tensor in model.inputs]


def _tensorflow(model: keras.Model, jit_compile: bool) -> Predict:
    compiled = tf.function(
        lambda *inputs: model(list(inputs) if len(inputs) > 1 else inputs[0], training=False),
        input_signature=input_signature(model),
        jit_compile=jit_compile,
    )

    def predict(batch):
        arrays = batch if isinstance(batch, list) else [batch]
        result = compiled(*(tf.convert_to_tensor(array, tf.float32) for array in arrays))
        return [tensor.numpy() for tensor in result] if isinstance(result, (list, tuple)) else result.numpy()
    return predict


def _openvino(model: keras.Model, precision: str) -> Predict:
    from core.models.openvino_backend import OpenVinoRunner

    # The thread count configure_threads gave TensorFlow is the one this worker may use.
    return OpenVinoRunner(model, tf.config.threading.get_intra_op_parallelism_threads(), precision)


def build_predict(model: keras.Model, backend: str, precision: str = "f32") -> Predict:
    """The model as a function on float batches, run by ``backend`` in ``precision`` (f32 or bf16)."""
    if backend == "openvino":
        return _openvino(model, precision)
    if precision != "f32":
        raise ValueError(f"precision {precision!r} needs the openvino backend, not {backend!r}")
    if backend in ("tensorflow", "xla"):
        return _tensorflow(model, jit_compile=backend == "xla")
    raise ValueError(f"unknown backend {backend!r}; known: {BACKENDS}")


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
    # The arithmetic the backend runs the network in: f32, or bf16 (core/models/precision.py).
    precision: str = "f32"
    # This machine's measured speed of the network, set when the registry loads it (core/cost.py).
    throughput: Throughput | None = None

    @classmethod
    def from_keras(cls, name: str, model: keras.Model, margin: int, backend: str = "tensorflow",
                   parameters: int | None = None, scale: int = 4, border: Border | None = None,
                   statistics: keras.Model | None = None, precision: str = "f32") -> "Network":
        """``model`` run by ``backend`` in ``precision``; ``parameters`` defaults to the model's own count."""
        return cls(name, build_predict(model, backend, precision), margin, scale,
                   int(model.count_params()) if parameters is None else parameters, border,
                   None if statistics is None else build_predict(statistics, backend, precision), precision)

    @property
    def alignment(self) -> int:
        """Tiles must start at multiples of this to compute what the whole image computes."""
        return self.border.multiple if self.border is not None else 1

    def release_memory(self) -> None:
        """Give back what the backend holds between requests, so that one model's windows do not add to
        the next request's (the memory budget counts one model's windows at a time)."""
        _release(self.run)
        _release(self.measure)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, scale * h, scale * w, 3) RGB in [0, 1], each image on its own."""
        if self.measure is None:
            return self._run(batch, [])
        return self._run(batch, self._measure_windows(batch))

    def predictor(self, image: np.ndarray) -> Predict:
        """``predict`` for tiles of ``image`` (H, W, 3): a graph's global averages come from the whole image,
        so that every tile is scaled alike and tiles stay seam-free."""
        if self.measure is None:
            return self.predict
        averages = self._image_averages(image)
        _release(self.measure)  # its buffers would otherwise sit beside the tiles', outside the memory budget
        return lambda batch: self._run(batch, [np.repeat(average, len(batch), axis=0) for average in averages])

    def _run(self, batch: np.ndarray, averages: list[np.ndarray]) -> np.ndarray:
        height, width = batch.shape[1:3]
        if self.border is not None:
            batch = np.ascontiguousarray(self.border.extend(batch))
        result = self.run([batch, *averages] if averages else batch)[:, :height * self.scale, :width * self.scale]
        # In place where the backend handed over its own copy (OpenVINO's, TensorFlow's numpy()).
        return np.clip(result, 0.0, 1.0, out=result if result.flags.writeable else None)

    def _measure_windows(self, batch: np.ndarray) -> list[np.ndarray]:
        """Each global pooling's (N, 1, 1, C) averages for each image of the batch as the graph computes them."""
        if self.border is not None:
            batch = np.ascontiguousarray(self.border.extend(batch))
        measured = self.measure(batch)
        return measured if isinstance(measured, list) else [measured]

    def _image_averages(self, image: np.ndarray) -> list[np.ndarray]:
        """The averages over the whole image: exact for an image within one STATISTICS_WINDOW, else the
        area-weighted mean over windows of that side (Real-CUGAN's runner likewise averages over tiles)."""
        height, width = image.shape[:2]
        totals: list[np.ndarray] | None = None
        for top in range(0, height, STATISTICS_WINDOW):
            for left in range(0, width, STATISTICS_WINDOW):
                window = image[top:top + STATISTICS_WINDOW, left:left + STATISTICS_WINDOW]
                weight = window.shape[0] * window.shape[1] / (height * width)
                averages = [weight * average for average in self._measure_windows(window[None])]
                totals = averages if totals is None else [t + a for t, a in zip(totals, averages)]
        return totals


def _release(function: Predict | None) -> None:
    """The buffers of a backend that keeps them between calls (OpenVINO's), given back."""
    release = getattr(function, "release_memory", None)
    if release is not None:
        release()


def onnx_predict(path: Path) -> tuple[Predict, int]:
    """An ONNX file as a function on float batches, and its parameter count.

    OpenVINO runs it whatever ``BACKEND`` says: there is no Keras model for TensorFlow to run.
    """
    from core.models.openvino_backend import OnnxRunner

    runner = OnnxRunner(path, tf.config.threading.get_intra_op_parallelism_threads())
    return runner, runner.parameters


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools before any op runs; more threads than cores only adds contention.

    The OpenVINO backend reads the same count, so every backend fits the worker's share of the cores.
    """
    if threads <= 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow ran an op already (a second service in one process, as in tests): its pools stay.
        log.warning("TensorFlow is already initialised; keeping its thread pools instead of %d threads", threads)
