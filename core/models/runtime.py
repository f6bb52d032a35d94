"""A loaded network ready to run: a Keras model compiled once for any tile shape."""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

SCALE = 4


@dataclass(frozen=True)
class Network:
    """What the pipeline needs of a model: a 4x function on float batches and its context margin."""

    name: str
    keras_model: keras.Model
    margin: int
    backend: str = "tensorflow"

    def __post_init__(self) -> None:
        model = self.keras_model
        compiled = tf.function(
            lambda batch: tf.clip_by_value(model(batch, training=False), 0.0, 1.0),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
            jit_compile=self.backend == "xla",
        )
        object.__setattr__(self, "_compiled", compiled)

    @property
    def scale(self) -> int:
        return SCALE

    @property
    def parameters(self) -> int:
        return int(self.keras_model.count_params())

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) RGB in [0, 1] -> (N, 4h, 4w, 3) RGB in [0, 1]."""
        return self._compiled(tf.convert_to_tensor(batch, tf.float32)).numpy()


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools before any op runs; more threads than cores only adds contention."""
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
