"""How much context a tile needs, and what it costs: chooses the models' tile margins.

For each margin: the lowest PSNR, over Set14's inputs, between tiled and
whole-image results (tiles of 32 px force many seams; ≥ 45 dB is the bar of
tests/core/test_tiling.py), and the network time for a 500x500 input with the
tile sizes worth choosing between. Run under ``flock /tmp/cpu.lock``.

    python -m bench.seams
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from PIL import Image

from config import load_settings
from core.models.registry import SPECS
from core.models.runtime import Network
from core.tiling import run_tiled

MARGINS = (8, 12, 16)
TILES = (112, 240)
SEAM_TILE = 32


def _levels(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def tiled(network: Network, image: np.ndarray, tile: int, margin: int) -> np.ndarray:
    out = np.zeros((image.shape[0] * 4, image.shape[1] * 4, 3), np.uint8)

    def write(y: int, x: int, block: np.ndarray) -> None:
        out[y:y + block.shape[0], x:x + block.shape[1]] = _levels(block)

    run_tiled(network.predict, image, 4, tile, margin, 1, write)
    return out


def main() -> None:
    settings = load_settings()
    photos = sorted((settings.datasets_dir / "Set14" / "LR_bicubic" / "X4").glob("*.png"))
    for name in ("srgan", "srresnet"):
        network = Network(name, SPECS[name].build(settings), 16, settings.backend)
        images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in photos]
        wholes = [_levels(network.predict(image[None])[0]) for image in images]
        for margin in MARGINS:
            worst = min(_psnr(tiled(network, image, SEAM_TILE, margin), whole)
                        for image, whole in zip(images, wholes))
            print(f"{name} margin {margin:2}: lowest PSNR tiled vs whole over Set14 {worst:.1f} dB", flush=True)
    big = np.asarray(Image.open(photos[0]).convert("RGB").resize((500, 500)), np.float32) / 255
    for margin in MARGINS:
        for tile in TILES:
            times = []
            for _ in range(2):
                started = time.perf_counter()
                tiled(network, big, tile, margin)
                times.append(time.perf_counter() - started)
            print(f"500x500 margin {margin:2} tile {tile:3}: {statistics.median(times):.2f} s", flush=True)


if __name__ == "__main__":
    main()
