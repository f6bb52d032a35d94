"""How much context a tile needs, and what it costs: chooses the models' tile margins.

For each model, native scale and margin: the lowest PSNR, over Set14's inputs,
between tiled and whole-image results (tiles of 32 px force many seams; ≥ 45 dB
is the bar of tests/core/test_tiling.py); with ``--timing``, the network time
for a 500x500 input with the tile sizes worth choosing between. Run under
``flock /tmp/cpu.lock`` (``-x`` with ``--timing``).

    python -m bench.seams [--models srgan,srresnet] [--margins 8,12,16] [--timing]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from config import Settings, load_settings
from core.models.specs import SPECS, Variant
from core.backends import choose
from core.models.runtime import Network
from core.options import NO_DENOISE
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
    scale = network.scale
    out = np.zeros((image.shape[0] * scale, image.shape[1] * scale, 3), np.uint8)

    def write(y: int, x: int, block: np.ndarray) -> None:
        out[y:y + block.shape[0], x:x + block.shape[1]] = _levels(block)

    run_tiled(network.predictor(image), image, scale, tile, margin, 1, write, align=network.alignment)
    return out


def lowest_psnr(network: Network, images: list[np.ndarray], margin: int) -> float:
    """The worst image's PSNR between tiles of SEAM_TILE px with ``margin`` and the whole image at once."""
    return min(_psnr(tiled(network, image, SEAM_TILE, margin), _levels(network.predictor(image)(image[None])[0]))
               for image in images)


def network_of(name: str, variant: Variant, settings: Settings) -> Network:
    return choose(settings).module.network(SPECS[name], variant, settings, choose(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="srgan,srresnet", help="comma-separated model ids")
    parser.add_argument("--margins", default=",".join(map(str, MARGINS)), help="comma-separated margins to try")
    parser.add_argument("--timing", action="store_true", help="also time a 500x500 input (last model)")
    args = parser.parse_args()
    settings = load_settings()
    margins = tuple(int(m) for m in args.margins.split(","))
    photos = sorted((settings.datasets_dir / "Set14" / "LR_bicubic" / "X4").glob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in photos]
    for name in args.models.split(","):
        for variant in SPECS[name].variants:
            if variant.denoise != NO_DENOISE:
                continue
            network = network_of(name, variant, settings)
            for margin in margins:
                print(f"{name} {variant.scale}x margin {margin:2}: lowest PSNR tiled vs whole over Set14 "
                      f"{lowest_psnr(network, images, margin):.1f} dB", flush=True)
    if not args.timing:
        return
    big = np.asarray(Image.open(photos[0]).convert("RGB").resize((500, 500)), np.float32) / 255
    for margin in margins:
        for tile in TILES:
            times = []
            for _ in range(2):
                started = time.perf_counter()
                tiled(network, big, tile, margin)
                times.append(time.perf_counter() - started)
            print(f"500x500 margin {margin:2} tile {tile:3}: {statistics.median(times):.2f} s", flush=True)


if __name__ == "__main__":
    main()
