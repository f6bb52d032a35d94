"""Tile geometry and tiled inference.

The input is cut into windows of one shape per image (about ``tile + 2 *
margin`` a side, fitted to the image so little overlap is recomputed) that
always lie inside the image: at the image's edges a window is shifted inwards
instead of padded, so the network pads there exactly as it would on the whole
image. Only each window's centre (its *core*) is written
to the output, so memory depends on the tile size, not on the image size.

How much context (margin) a model needs is a fact of the model; core/models/margin_probe.py
measures it for a model that does not state it (an operator's model in MODELS_DIR).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


# Window sides are multiples of this: a compiled function per shape (XLA) is then reused
# across images of similar sizes, at a cost of at most quantum - 1 extra pixels per axis.
WINDOW_QUANTUM = 16

Predict = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the window read, and the core written."""

    window_start: int
    window_size: int
    core_start: int
    core_size: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span

    @property
    def window_shape(self) -> tuple[int, int]:
        return self.rows.window_size, self.cols.window_size


def plan_axis(length: int, tile: int, margin: int, quantum: int = WINDOW_QUANTUM, align: int = 1) -> list[Span]:
    """Cover ``[0, length)`` with cores of at most about ``tile`` and windows of one size.

    Every core gets ``margin`` pixels of context on each side that has image
    there; at the image's edge the network's own zero padding is the context,
    so an edge window needs no margin outside the image. The window is as small
    as that allows for this length (less recomputed overlap), rounded up to a
    multiple of ``quantum`` so that few distinct shapes occur across images.

    Every window starts at a multiple of ``align``: a network that halves its
    resolution inside computes the same thing on a window as on the whole image
    only where the window keeps the image's grid of those halvings. The windows
    still stay within ``tile + 2 * margin`` rounded up to ``quantum``, the window
    the memory budget sized: one that the alignment's slack would take past it
    is cut to the least size that holds its core instead, or, where that is not
    enough, the cores are made smaller.
    """
    inner = length - 2 * margin
    count = max(1, -(-inner // tile))
    if count == 1:
        return [Span(0, length, 0, length)]
    # The window the memory budget sized (core/memory.py): an aligned network's slack must fit inside it.
    limit = _round_up(tile + 2 * margin, quantum)
    count = _count_within(length, inner, count, margin, quantum, align, limit)
    window = _window_size(length, -(-inner // count), margin, quantum, align, limit)
    bounds = [0] + [margin + round(i * inner / count) for i in range(1, count)] + [length]
    spans = []
    for core_start, core_end in zip(bounds, bounds[1:]):
        window_start = min(max(core_start - margin, 0) // align * align, length - window)
        spans.append(Span(window_start, window, core_start, core_end - core_start))
    return spans


def _window_size(length: int, core: int, margin: int, quantum: int, align: int, limit: int) -> int:
    """The one window size for cores of at most ``core`` pixels: the core, its margins and the up to
    ``align - 1`` pixels a window start moves back to be aligned, rounded up to the quantum; where that
    rounding would pass ``limit``, the least size that holds them instead."""
    needed = core + 2 * margin + align - 1
    window = min(length, _round_up(needed, quantum))
    # The last window ends with the image; it starts aligned when the rest is a multiple of align.
    window = min(length, window + (length - window) % align)
    if window > limit:
        window = min(length, needed + (length - needed) % align)
    return window


def _count_within(length: int, inner: int, count: int, margin: int, quantum: int, align: int, limit: int) -> int:
    """The fewest cores, from ``count``, whose windows stay within ``limit``; ``count`` as it is where even
    one-pixel cores cannot (a tile too small for the alignment)."""
    if _window_size(length, 1, margin, quantum, align, limit) > limit:
        return count
    while _window_size(length, -(-inner // count), margin, quantum, align, limit) > limit:
        count += 1
    return count


def _round_up(value: int, quantum: int) -> int:
    return -(-value // quantum) * quantum


def plan_tiles(height: int, width: int, tile: int, margin: int, align: int = 1) -> list[Tile]:
    """Every tile of an image; all share one window shape, so they batch freely."""
    return [Tile(rows, cols) for rows in plan_axis(height, tile, margin, align=align)
            for cols in plan_axis(width, tile, margin, align=align)]


def batches(tiles: Sequence[Tile], batch_size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(tiles), batch_size):
        yield tiles[start:start + batch_size]


def run_tiled(
    predict: Predict,
    image: np.ndarray,
    scale: int,
    tile: int,
    margin: int,
    batch_size: int,
    write: Callable[[int, int, np.ndarray], None],
    on_progress: Progress | None = None,
    align: int = 1,
) -> None:
    """Upscale ``image`` (H, W, 3, float32) tile by tile, windows starting at multiples of ``align``
    (``run_tiles`` on ``plan_tiles``)."""
    run_tiles(predict, image, scale, plan_tiles(*image.shape[:2], tile, margin, align), batch_size, write,
              on_progress)


def run_tiles(
    predict: Predict,
    image: np.ndarray,
    scale: int,
    tiles: Sequence[Tile],
    batch_size: int,
    write: Callable[[int, int, np.ndarray], None],
    on_progress: Progress | None = None,
) -> None:
    """Upscale ``image`` (H, W, 3, float32) over the planned ``tiles``, ``batch_size`` windows per call.

    ``write(y, x, block)`` receives each core's upscaled pixels and their
    top-left position in the output. ``on_progress(done, total)`` is called
    after each batch; it may raise to stop the work.
    """
    done = 0
    for group in batches(tiles, batch_size):
        windows = np.stack([_window(image, t) for t in group])
        upscaled = predict(windows)
        for t, out in zip(group, upscaled):
            write(t.rows.core_start * scale, t.cols.core_start * scale, _core(out, t, scale))
        done += len(group)
        if on_progress is not None:
            on_progress(done, len(tiles))


def _window(image: np.ndarray, t: Tile) -> np.ndarray:
    r, c = t.rows, t.cols
    return image[r.window_start:r.window_start + r.window_size, c.window_start:c.window_start + c.window_size]


def _core(upscaled: np.ndarray, t: Tile, scale: int) -> np.ndarray:
    top = (t.rows.core_start - t.rows.window_start) * scale
    left = (t.cols.core_start - t.cols.window_start) * scale
    return upscaled[top:top + t.rows.core_size * scale, left:left + t.cols.core_size * scale]
