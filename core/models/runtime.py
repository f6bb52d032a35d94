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
class Network:
    """What the pipeline needs of a model: a function on float batches, its scale and its context margin."""

    name: str
    run: Predict
    margin: int
    scale: int = SCALE
    # The published network's parameter count, where the model served is a rewritten form of it.
    parameters: int | None = None

    @classmethod
    def from_keras(cls, name: str, model: keras.Model, margin: int, backend: str = "tensorflow",
                   parameters: int | None = None, scale: int = SCALE) -> "Network":
        """``model`` run by ``backend``; ``parameters`` defaults to the model's own count."""
        return cls(name, build_predict(model, backend), margin, scale,
                   int(model.count_params()) if parameters is None else parameters)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, scale*h, scale*w, 3) RGB in [0, 1]."""
        return np.clip(self.run(batch), 0.0, 1.0)


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
