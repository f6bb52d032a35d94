"""The Keras graphs run by TensorFlow (``BACKEND=tensorflow``, or ``xla`` to compile them): the reference
that the other backends are held to, in f32 only. Also what the OpenVINO backend converts from."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from core.backends import KERAS_BACKENDS, Batch, Choice, Runner, cpu_name
from core.models.border import Border
from core.models.runtime import Network

if TYPE_CHECKING:
    from config import Settings
    from core.models.specs import ModelSpec, Variant

log = logging.getLogger(__name__)

def input_signature(model: keras.Model) -> list[tf.TensorSpec]:
    """One float32 spec per model input, batch and image sides left open."""
    return [tf.TensorSpec([None, *tensor.shape[1:]], tf.float32) for tensor in model.inputs]


class TensorFlowRunner:
    """The Keras model in a ``tf.function``; TensorFlow frees its buffers itself."""

    def __init__(self, model: keras.Model, jit_compile: bool = False) -> None:
        self._compiled = tf.function(
            lambda *inputs: model(list(inputs) if len(inputs) > 1 else inputs[0], training=False),
            input_signature=input_signature(model), jit_compile=jit_compile)

    def __call__(self, batch: Batch) -> Batch:
        arrays = batch if isinstance(batch, list) else [batch]
        result = self._compiled(*(tf.convert_to_tensor(array, tf.float32) for array in arrays))
        return [tensor.numpy() for tensor in result] if isinstance(result, (list, tuple)) else result.numpy()

    def release_memory(self) -> None:
        """Nothing to give back: TensorFlow's allocator returns a call's buffers when it ends."""


def runner(model: keras.Model, precision: str = "f32", jit_compile: bool = False) -> TensorFlowRunner:
    """``model`` run by TensorFlow; its arithmetic is f32 only."""
    if precision != "f32":
        raise ValueError(f"precision {precision!r} needs the openvino or pytorch backend, not tensorflow")
    return TensorFlowRunner(model, jit_compile)


def start(settings: Settings, device: str) -> None:
    configure_threads(settings.worker_cores)


def network(spec: ModelSpec, variant: Variant, settings: Settings, choice: Choice) -> Network:
    """A built-in model's network: the Keras graph its weights describe, in f32."""
    return keras_network(spec, variant, settings, choice.backend, "f32")


def keras_network(spec: ModelSpec, variant: Variant, settings: Settings, backend: str, precision: str) -> Network:
    """A variant's Keras graph (in its faster served form, where the spec has one) on a Keras backend."""
    model, statistics = variant.keras_form(settings)
    served = spec.inference_form(model) if spec.inference_form else model
    return from_keras(spec.name, served, spec.margin, backend, threads=settings.worker_cores,
                      parameters=int(model.count_params()), scale=variant.scale, border=variant.border,
                      statistics=statistics, precision=precision)


def from_keras(name: str, model: keras.Model, margin: int, backend: str = "tensorflow", *, threads: int = 0,
               parameters: int | None = None, scale: int = 4, border: Border | None = None,
               statistics: keras.Model | None = None, precision: str = "f32") -> Network:
    """``model`` as a Network on a Keras backend (``parameters`` defaults to the model's own count)."""
    make = _maker(backend, threads)
    return Network(name, make(model, precision), margin, scale,
                   int(model.count_params()) if parameters is None else parameters, border,
                   None if statistics is None else make(statistics, precision), precision)


def _maker(backend: str, threads: int) -> Callable[[keras.Model, str], Runner]:
    if backend == "openvino":
        from core.backends.openvino import OpenVinoRunner

        return lambda model, precision: OpenVinoRunner(model, threads, precision)
    if backend in ("tensorflow", "xla"):
        return lambda model, precision: runner(model, precision, jit_compile=backend == "xla")
    raise ValueError(f"unknown backend {backend!r}; known Keras backends: {KERAS_BACKENDS}")


def device_facts(device: str) -> dict[str, object]:
    """What /model/metadata says of the device: the CPU, through TensorFlow."""
    return {"kind": "cpu", "name": cpu_name(), "runtime": f"TensorFlow {tf.__version__}"}


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools before any op runs; more threads than cores only adds contention."""
    if threads <= 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow ran an op already (a second service in one process, as in tests): its pools stay.
        log.warning("TensorFlow is already initialised; keeping its thread pools instead of %d threads", threads)


def usage(device: str) -> dict[str, float]:
    """Nothing beyond the process's own figures: the CPU's memory is the worker's RSS."""
    return {}


def failure(device: str) -> str | None:
    """None: no error on the CPU leaves the process unable to run the networks."""
    return None


def memory_total(device: str) -> int | None:
    """None: on the CPU the budget is MEMORY_BUDGET_MB."""
    return None
