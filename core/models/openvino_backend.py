"""Run a Keras model with OpenVINO's CPU runtime.

On this kind of CPU (AVX2/FMA, no AVX-512) OpenVINO runs the SRGAN generator
at about twice TensorFlow's throughput with the same fp32 arithmetic (see
docs/speed.md). The model is converted once at load time from the Keras
model's traced TensorFlow graph, so the Keras model stays the single source
of the weights and TensorFlow remains the reference the tests compare with.
"""
from __future__ import annotations

import threading

import keras
import numpy as np
import openvino as ov
import tensorflow as tf

from core.models.runtime import input_signature


def compile_for_cpu(model: keras.Model, threads: int, **extra_config: object) -> ov.CompiledModel:
    """The Keras model's traced graph, converted and compiled for OpenVINO's CPU plugin in fp32."""
    traced = tf.function(lambda *inputs: model(list(inputs) if len(inputs) > 1 else inputs[0], training=False),
                         input_signature=input_signature(model))
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", **extra_config}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ov.convert_model(traced.get_concrete_function()), "CPU", config)


class OpenVinoRunner:
    """A Keras model compiled by OpenVINO for batches of any size and shape.

    The shape stays dynamic: OpenVINO's CPU plugin runs a dynamic model as fast
    as a static one here, and one compiled model avoids both a compile per tile
    shape and the memory that a cache of compiled shapes would hold.
    """

    def __init__(self, model: keras.Model, threads: int) -> None:
        self._compiled = compile_for_cpu(model, threads)
        # The converted graph may name more results than the Keras model has outputs; those come first.
        self._outputs = self._compiled.outputs[:len(model.outputs)]
        self._request = self._compiled.create_infer_request()
        # One infer request is not safe to share between threads; the worker's inference
        # slot already runs one request at a time, the lock keeps that true for any caller.
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """The output for a batch (a list of arrays for a model of several inputs); a list for several outputs."""
        arrays = batch if isinstance(batch, list) else [batch]
        with self._lock:
            result = self._request.infer([np.ascontiguousarray(array, np.float32) for array in arrays])
            outputs = [np.array(result[output]) for output in self._outputs]
        return outputs if len(outputs) > 1 else outputs[0]
