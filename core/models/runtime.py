"""A loaded network ready to run on one of the inference backends.

Backends (setting ``BACKEND``):

- ``tensorflow``: the Keras model in a ``tf.function``; the reference.
- ``xla``: the same with XLA compilation (recompiles for every new tile shape).
- ``openvino``: the model converted once to OpenVINO and run by its CPU plugin;
  the fastest here, held to the reference by tests/core/test_backends.py.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "xla", "openvino")

Predict = Callable[[np.ndarray], np.ndarray]


def _tensorflow(model: keras.Model, jit_compile: bool) -> Predict:
    compiled = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        jit_compile=jit_compile,
    )
    return lambda batch: compiled(tf.convert_to_tensor(batch, tf.float32)).numpy()


def _openvino(model: keras.Model) -> Predict:
    from core.models.openvino_backend import OpenVinoRunner

    # The thread count configure_threads gave TensorFlow is the one this worker may use.
    return OpenVinoRunner(model, tf.config.threading.get_intra_op_parallelism_threads())


def build_predict(model: keras.Model, backend: str) -> Predict:
    """The model as a function on float batches, run by ``backend``."""
    if backend == "openvino":
        return _openvino(model)
    if backend in ("tensorflow", "xla"):
        return _tensorflow(model, jit_compile=backend == "xla")
    raise ValueError(f"unknown backend {backend!r}; known: {BACKENDS}")


@dataclass(frozen=True)
class Border:
    """A graph that crops its borders (valid convolutions, Crop layers), as Real-CUGAN's do.

    The input is extended by ``pad`` mirrored pixels on each side, and on the bottom and right up to
    a multiple of ``multiple`` (the graph halves its resolution that often), as Real-CUGAN's own runner
    pads; the graph then gives back ``scale`` times the input, less the padding, which is cut off.
    """

    pad: int
    multiple: int

    def extend(self, batch: np.ndarray) -> np.ndarray:
        height, width = batch.shape[1:3]
        bottom, right = (self.pad + -side % self.multiple for side in (height, width))
        return np.pad(batch, ((0, 0), (self.pad, bottom), (self.pad, right), (0, 0)), mode="reflect")


@dataclass(frozen=True)
class Network:
    """What the pipeline needs of a model: a function on float batches, its scale and its context margin."""

    name: str
    keras_model: keras.Model
    margin: int
    backend: str = "tensorflow"
    # The published network's parameter count, where the model served is a rewritten form of it.
    parameters: int | None = None
    # Output pixels per input pixel along each side (the registry checks it when warming the network up).
    scale: int = 4
    border: Border | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_predict", build_predict(self.keras_model, self.backend))
        if self.parameters is None:
            object.__setattr__(self, "parameters", int(self.keras_model.count_params()))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, scale * h, scale * w, 3) RGB in [0, 1]."""
        if self.border is None:
            return np.clip(self._predict(batch), 0.0, 1.0)
        height, width = batch.shape[1:3]
        result = self._predict(np.ascontiguousarray(self.border.extend(batch)))
        return np.clip(result[:, :height * self.scale, :width * self.scale], 0.0, 1.0)


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
