"""The context (margin) a tile needs to be seam-free, measured for a model that does not state it (an
operator's model in MODELS_DIR): tiles against the whole image on real photos, near the seams."""
from __future__ import annotations

import numpy as np

from core.metrics import psnr
from core.tiling import Predict, Span, Tile, run_tiles

# Margins tried, smallest first, when a model's margin is measured; each costs one probe run.
MARGIN_CANDIDATES = (8, 16, 32, 48)
# Tiled against whole image at or above this PSNR counts as seam-free (the bar of the built-in models).
SEAM_FREE_DB = 45.0
# Small cores, so that a probe of 2 x (margin + PROBE_TILE) pixels has a seam across its middle.
PROBE_TILE = 16


def seam_free_margin(predict: Predict, photos: list[np.ndarray], scale: int,
                     candidates: tuple[int, ...] = MARGIN_CANDIDATES, alignment: int = 1) -> tuple[int, float]:
    """The smallest margin in ``candidates`` at which tiles match the whole image, and the worst PSNR in dB.

    For each margin, a square from the centre of each photo (H, W, 3 float32 in [0, 1]), two
    tiles wide and high, is run whole and tiled: the seams then lie exactly ``margin`` pixels
    from the windows' edges, where a too-small margin shows. The windows start at multiples of
    ``alignment``, as the network's are served (``Network.alignment``). Raises ``ValueError`` when no
    margin does.
    """
    best = 0.0
    for margin in candidates:
        worst = min(_probe(predict, photo, scale, margin, alignment) for photo in photos)
        if worst >= SEAM_FREE_DB:
            return margin, worst
        best = max(best, worst)
    raise ValueError(f"tiles differ from the whole image at every margin up to {candidates[-1]} px "
                     f"(best {best:.1f} dB, {SEAM_FREE_DB:.0f} dB needed)")


def probe_tiles(margin: int, alignment: int = 1) -> tuple[int, list[Tile]]:
    """The probe square's side and its four tiles: two windows a side, at 0 and at the first multiple of
    ``alignment`` from PROBE_TILE, each ``margin`` pixels past the seam in the square's middle.

    Planned here rather than by ``core.tiling.plan_tiles``: the planner widens each window by the ``alignment - 1``
    pixels a start may move back, which on a square of two tiles leaves more than ``margin`` on both sides
    of the seam (or makes both windows the whole square), so a too-small margin would not show."""
    core = -(-PROBE_TILE // alignment) * alignment
    side = 2 * (margin + core)
    window = core + 2 * margin
    spans = [Span(0, window, 0, core + margin), Span(core, window, core + margin, core + margin)]
    return side, [Tile(rows, cols) for rows in spans for cols in spans]


def _probe(predict: Predict, photo: np.ndarray, scale: int, margin: int, alignment: int) -> float:
    """PSNR of tiled against whole near the seams, on a square of ``photo`` that fits ``margin``."""
    side, tiles = probe_tiles(margin, alignment)
    square = _centre_square(photo, side)
    # Only the pixels within PROBE_TILE of the seams (the square's middle) count, however wide an aligned
    # core is: as dense in seams as tiles of 2 * PROBE_TILE pixels, the bar the built-in models' margins were chosen by.
    near_seams = slice((side // 2 - PROBE_TILE) * scale, (side // 2 + PROBE_TILE) * scale)
    tiled, whole = _tiled_levels(predict, square, scale, tiles), _levels(predict(square[None])[0])
    return psnr(tiled[near_seams, near_seams], whole[near_seams, near_seams])


def _centre_square(photo: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` of ``photo``, mirrored outwards where the photo is smaller."""
    cropped = []
    for axis in (0, 1):
        length = photo.shape[axis]
        start = max(0, (length - side) // 2)
        cropped.append(slice(start, start + min(side, length)))
    square = photo[cropped[0], cropped[1]]
    missing = [side - square.shape[0], side - square.shape[1]]
    pads = [(gap // 2, gap - gap // 2) for gap in missing] + [(0, 0)]
    return np.ascontiguousarray(np.pad(square, pads, mode="reflect"))


def _tiled_levels(predict: Predict, image: np.ndarray, scale: int, tiles: list[Tile]) -> np.ndarray:
    out = np.empty((image.shape[0] * scale, image.shape[1] * scale, 3), np.uint8)

    def write(y: int, x: int, block: np.ndarray) -> None:
        out[y:y + block.shape[0], x:x + block.shape[1]] = _levels(block)

    run_tiles(predict, image, scale, tiles, 1, write)
    return out


def _levels(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
