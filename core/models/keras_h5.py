"""Loader for Keras-2 HDF5 weight files (``model.save_weights('x.h5')``).

Keras 3 no longer reads these by layer name, so the arrays are read with h5py
in the file's layer order and assigned to the layers of a model built with the
same topology.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

# The reader serves the PyTorch path too, which has no Keras: only the type is Keras'.
if TYPE_CHECKING:
    import keras


def read_layer_weights(path: Path) -> list[list[np.ndarray]]:
    """The weight arrays of each layer that has any, in the file's layer order."""
    with h5py.File(path, "r") as h5:
        layers = []
        for layer_name in h5.attrs["layer_names"]:
            group = h5[_text(layer_name)]
            names = [_text(name) for name in group.attrs["weight_names"]]
            if names:
                layers.append([np.asarray(group[name]) for name in names])
        return layers


def load_into(model: keras.Model, path: Path) -> None:
    """Assign the file's weights to ``model``'s weighted layers, checking every shape."""
    stored = read_layer_weights(path)
    weighted = [layer for layer in model.layers if layer.weights]
    if len(stored) != len(weighted):
        raise ValueError(f"{path.name}: {len(stored)} weighted layers in the file, {len(weighted)} in the model")
    for layer, arrays in zip(weighted, stored):
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"{path.name}: layer {layer.name} expects {expected}, file has {[a.shape for a in arrays]}")
        layer.set_weights(arrays)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
