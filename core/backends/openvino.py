"""The CPU backend (``BACKEND=openvino``): a Keras model, or an operator's ONNX file, run by OpenVINO's CPU plugin.

OpenVINO runs the SRGAN generator at about twice TensorFlow's throughput with
the same fp32 arithmetic, and in bf16 where the CPU has it (see docs/speed.md).
The model is converted once at load time from the Keras model's traced TensorFlow graph, so the Keras model stays the single source
of the weights and TensorFlow remains the reference the tests compare with.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import openvino as ov
import tensorflow as tf

from core.backends import Choice, cpu_name
# failure, usage and memory_total: the CPU's, as TensorFlow's backend gives them.
from core.backends.tensorflow import (configure_threads, failure, input_signature, keras_network,  # noqa: F401
                                      memory_total, usage)
from core.models import precision
from core.models.runtime import Network

if TYPE_CHECKING:
    from config import Settings
    from core.models.specs import ModelSpec, Variant

# The CPU plugin keeps its executors (JIT kernels, oneDNN primitives) per input shape in a runtime cache that
# ``release_memory`` does not empty, 5000 entries by default: the resident size grew by 0.92 MiB (srgan) and 2.2 MiB
# (Real-CUGAN 2x) with each window shape run, linearly over 195 shapes, past what the plan reserves. An entry is one
# layer configuration at one shape (srgan's 37 convolutions are about 7), so this many hold the few shapes of one
# image's windows (the full one, the right and bottom edges, the corner) and evict those of images gone.
RUNTIME_CACHE_ENTRIES = 64
# oneDNN's own primitive cache (process-wide) kept the primitives the runtime cache let go (0.63 MiB per srgan shape);
# the runtime cache's executors hold those they still use, so it adds nothing but memory. oneDNN reads it on first
# use, before any model is compiled here; an operator's own setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


def start(settings: Settings, device: str) -> None:
    # TensorFlow traces the graphs that OpenVINO converts; its pools get the worker's share too.
    configure_threads(settings.worker_cores)


def network(spec: ModelSpec, variant: Variant, settings: Settings, choice: Choice) -> Network:
    """A built-in model's network: its Keras graph converted, in bf16 where the CPU and the model allow it."""
    arithmetic = precision.resolve(settings.precision, "openvino", spec.bf16_ok, precision.native_bf16())
    return keras_network(spec, variant, settings, "openvino", arithmetic)


def device_facts(device: str) -> dict[str, object]:
    """What /model/metadata says of the device: the CPU, through OpenVINO."""
    return {"kind": "cpu", "name": cpu_name(), "runtime": f"OpenVINO {ov.get_version().split('-')[0]}"}


def compile_for_cpu(model: keras.Model, threads: int, precision: str = "f32",
                    **extra_config: object) -> ov.CompiledModel:
    """The Keras model's traced graph, converted and compiled for OpenVINO's CPU plugin in ``precision``
    (``f32`` or ``bf16``; core/models/precision.py decides which)."""
    traced = tf.function(lambda *inputs: model(list(inputs) if len(inputs) > 1 else inputs[0], training=False),
                         input_signature=input_signature(model))
    return compile_converted(ov.convert_model(traced.get_concrete_function()), threads, precision, **extra_config)


def compile_converted(model: ov.Model, threads: int, precision: str = "f32", **extra_config: object) -> ov.CompiledModel:
    """An OpenVINO model compiled for the CPU plugin in ``precision``."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision,
                                 "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_ENTRIES,
                                 **extra_config}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(model, "CPU", config)


class OpenVinoRunner:
    """A Keras model compiled by OpenVINO for batches of any size and shape.

    The shape stays dynamic: OpenVINO's CPU plugin runs a dynamic model as fast
    as a static one here, and one compiled model avoids both a compile per tile
    shape and the memory that a cache of compiled shapes would hold.
    """

    def __init__(self, model: keras.Model, threads: int, precision: str = "f32") -> None:
        # The compiled model reads its weights from the Keras model's memory, without a copy: once the
        # Keras model were freed, the next model loaded would overwrite them. The runner keeps it alive.
        self._weights = model
        # The converted graph may name more results than the Keras model has outputs; those come first.
        self._start(compile_for_cpu(model, threads, precision), len(model.outputs))

    def _start(self, compiled: ov.CompiledModel, outputs: int) -> None:
        self._compiled = compiled
        self._outputs = compiled.outputs[:outputs]
        self._request = self._compiled.create_infer_request()
        # One infer request is not safe to share between threads; the worker's inference
        # slot already runs one request at a time, the lock keeps that true for any caller.
        self._lock = threading.Lock()

    def release_memory(self) -> None:
        """Free the intermediate buffers: OpenVINO keeps those of the largest window run until told."""
        with self._lock:
            self._compiled.release_memory()

    def __call__(self, batch: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """The output for a batch (a list of arrays for a model of several inputs); a list for several outputs."""
        arrays = batch if isinstance(batch, list) else [batch]
        with self._lock:
            result = self._request.infer([np.ascontiguousarray(array, np.float32) for array in arrays])
            outputs = [np.array(result[output]) for output in self._outputs]
        return outputs if len(outputs) > 1 else outputs[0]


class OnnxRunner(OpenVinoRunner):
    """An ONNX file (an operator's model in MODELS_DIR), read and run by OpenVINO without TensorFlow.

    Super-resolution networks are exported from PyTorch: one input (N, 3, H, W) and one output
    (N, 3, sH, sW). OpenVINO's pre- and post-processing turn that into the NHWC float32 batches
    the pipeline hands every model, so an fp16 export runs too, and a file exported for one fixed
    input size is reshaped to take any tile.
    """

    def __init__(self, path: Path, threads: int) -> None:
        model = read_onnx(path)
        self.parameters = count_parameters(model)
        self._start(compile_converted(model, threads), 1)


def read_onnx(path: Path) -> ov.Model:
    """``path`` as an OpenVINO model taking and giving NHWC float32 RGB batches of any size."""
    model = ov.Core().read_model(path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{path.name}: expected one input and one output, found "
                         f"{len(model.inputs)} and {len(model.outputs)}")
    for port, role in ((model.input(0), "input"), (model.output(0), "output")):
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4 or not _three_channels(shape[1]):
            raise ValueError(f"{path.name}: the {role} must be RGB images (N, 3, H, W), not {shape}")
    model.reshape({model.input(0): ov.PartialShape([-1, 3, -1, -1])})
    steps = ov.preprocess.PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.output().tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("NHWC"))
    steps.output().model().set_layout(ov.Layout("NCHW"))
    return steps.build()


def _three_channels(dimension: ov.Dimension) -> bool:
    return dimension.is_dynamic or dimension.get_length() == 3


def count_parameters(model: ov.Model) -> int:
    """The floating-point constants of a model: its weights (shape constants are integers)."""
    return sum(int(np.prod(op.get_output_shape(0))) for op in model.get_ops()
               if op.get_type_name() == "Constant" and op.get_element_type().is_real())
