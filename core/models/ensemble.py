"""Geometric self-ensemble: average the network over the 8 flips and rotations."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def _transform(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = np.rot90(batch, k, axes=(1, 2))
    return batch[:, :, ::-1] if flip else batch


def _invert(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = batch[:, :, ::-1] if flip else batch
    return np.rot90(batch, -k, axes=(1, 2))


def self_ensemble(predict: Predict) -> Predict:
    """A predict function that costs 8 runs of ``predict`` and returns their mean."""
    def averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for k in range(4):
            for flip in (False, True):
                out = _invert(predict(np.ascontiguousarray(_transform(batch, k, flip))), k, flip)
                total = out if total is None else total + out
        return total / 8
    return averaged
