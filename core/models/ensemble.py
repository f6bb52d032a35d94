"""Geometric self-ensemble: average the network over the 8 flips and rotations."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
# k quarter turns, then mirrored left to right or not: the 8 ways a window is turned.
ORIENTATIONS = tuple((k, flip) for k in range(4) for flip in (False, True))


def _transform(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = np.rot90(batch, k, axes=(1, 2))
    return batch[:, :, ::-1] if flip else batch


def _invert(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = batch[:, :, ::-1] if flip else batch
    return np.rot90(batch, -k, axes=(1, 2))


def turned(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """(H, W, C) ``image`` turned as ``self_ensemble`` turns each window (a view, no copy)."""
    return _transform(image[None], k, flip)[0]


def self_ensemble(predict_for: Callable[[int, bool], Predict]) -> Predict:
    """A predict function that costs 8 runs and returns their mean: the windows turned each way (k quarter
    turns, then mirrored or not) are run by ``predict_for(k, flip)`` and the result turned back.

    A network whose output depends on the whole image as well as the window (Real-CUGAN's averages) needs the
    whole image turned the same way for each: the upright image's averages belong to another input."""
    predicts = {(k, flip): predict_for(k, flip) for k, flip in ORIENTATIONS}

    def averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for (k, flip), predict in predicts.items():
            out = _invert(predict(np.ascontiguousarray(_transform(batch, k, flip))), k, flip)
            total = out if total is None else total + out
        return total / 8
    return averaged
