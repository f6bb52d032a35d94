"""The padding of graphs that crop their borders, kept apart from the backends so specs need no TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Border:
    """A graph that crops its borders (valid convolutions, Crop layers), as Real-CUGAN's do.

    The input is extended by ``pad`` mirrored pixels on each side, and on the bottom and right up to
    a multiple of ``multiple`` (the graph halves its resolution that often), as Real-CUGAN's own runner
    pads; the graph then gives back ``scale`` times the input, less the padding, which is cut off.
    """

    pad: int
    multiple: int

    def padded(self, side: int) -> int:
        """The side that a window side of ``side`` pixels runs at, extended: what the network's memory grows with."""
        return side + 2 * self.pad + -side % self.multiple

    def extend(self, batch: np.ndarray) -> np.ndarray:
        height, width = batch.shape[1:3]
        bottom, right = (self.padded(side) - side - self.pad for side in (height, width))
        return np.pad(batch, ((0, 0), (self.pad, bottom), (self.pad, right), (0, 0)), mode="reflect")
