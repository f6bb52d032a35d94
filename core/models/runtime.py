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

SCALE = 4
BACKENDS = ("tensorflow", "xla", "openvino")

Predict = Callable[[np.ndarray], np.ndarray]


def _tensorflow(model: keras.Model, jit_compile: bool) -> Predict:
    compiled = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        jit_compile=jit_compile,
    )
    return lambda batch: compiled(tf.convert_to_tensor(batch, tf.float32)).numpy()


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
    """What the pipeline needs of a model: a 4x function on float batches and its context margin."""

    name: str
    keras_model: keras.Model
    margin: int
    backend: str = "tensorflow"
    precision: str = "f32"
    # The published network's parameter count, where the model served is a rewritten form of it.
    parameters: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_predict", build_predict(self.keras_model, self.backend, self.precision))
        if self.parameters is None:
            object.__setattr__(self, "parameters", int(self.keras_model.count_params()))

    @property
    def scale(self) -> int:
        return SCALE

    def release_memory(self) -> None:
        """Give back what the backend holds between requests, so that one model's windows do not add to
        the next request's (the memory budget counts one model's windows at a time)."""
        release = getattr(self._predict, "release_memory", None)
        if release is not None:
            release()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, 4h, 4w, 3) RGB in [0, 1]."""
        result = self._predict(batch)
        # In place where the backend handed over its own copy (OpenVINO's, TensorFlow's numpy()).
        return np.clip(result, 0.0, 1.0, out=result if result.flags.writeable else None)


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
