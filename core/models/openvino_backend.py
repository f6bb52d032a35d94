"""Run a Keras model with OpenVINO's CPU runtime.

OpenVINO runs the SRGAN generator at about twice TensorFlow's throughput with
the same fp32 arithmetic, and in bf16 where the CPU has it (see docs/speed.md). The model is converted once at load time from the Keras
model's traced TensorFlow graph, so the Keras model stays the single source
of the weights and TensorFlow remains the reference the tests compare with.
"""
from __future__ import annotations

import threading

import keras
import numpy as np
import openvino as ov
import tensorflow as tf


def compile_for_cpu(model: keras.Model, threads: int, precision: str = "f32",
                    **extra_config: object) -> ov.CompiledModel:
    """The Keras model's traced graph, converted and compiled for OpenVINO's CPU plugin in ``precision``
    (``f32`` or ``bf16``; core/models/precision.py decides which)."""
    traced = tf.function(lambda batch: model(batch, training=False),
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision, **extra_config}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ov.convert_model(traced.get_concrete_function()), "CPU", config)


class OpenVinoRunner:
    """A Keras model compiled by OpenVINO for batches of any size and shape.

    The shape stays dynamic: OpenVINO's CPU plugin runs a dynamic model as fast
    as a static one here, and one compiled model avoids both a compile per tile
    shape and the memory that a cache of compiled shapes would hold.
    """

    def __init__(self, model: keras.Model, threads: int, precision: str = "f32") -> None:
        self._compiled = compile_for_cpu(model, threads, precision)
        self._request = self._compiled.create_infer_request()
        # One infer request is not safe to share between threads; the worker's inference
        # slot already runs one request at a time, the lock keeps that true for any caller.
        self._lock = threading.Lock()

    def release_memory(self) -> None:
        """Free the intermediate buffers: OpenVINO keeps those of the largest window run until told."""
        with self._lock:
            self._compiled.release_memory()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self._request.infer([np.ascontiguousarray(batch, np.float32)])
            return np.array(result[self._compiled.output(0)])
