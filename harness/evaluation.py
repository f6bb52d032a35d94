"""The evaluation sets and their scoring, as the quality table and the quality tests use them."""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core import metrics
from core.options import UpscaleOptions
from core.service import Service

ROOT = Path(__file__).resolve().parent.parent
# The quality table's measured scores (bench.quality writes them, tests compare with them).
RESULTS_FILE = ROOT / "docs" / "quality-results.json"
SCALE = 4


@dataclass(frozen=True)
class Pair:
    name: str
    lr: Path
    hr: Path


def pairs(datasets_dir: Path, set_name: str, limit: int | None = None) -> list[Pair]:
    """The (LR, HR) files of a set, by the ``HR/<name>.png`` <-> ``LR_bicubic/X4/<name>x4.png`` naming."""
    hr_dir = datasets_dir / set_name / "HR"
    lr_dir = datasets_dir / set_name / "LR_bicubic" / f"X{SCALE}"
    found = [Pair(hr.stem, lr_dir / f"{hr.stem}x{SCALE}.png", hr) for hr in sorted(hr_dir.glob("*.png"))]
    if not found:
        raise FileNotFoundError(f"no HR images in {hr_dir} (set DATASETS_DIR or datasets_dir)")
    return found[:limit]


def read_image(path: Path | bytes) -> np.ndarray:
    """uint8 (H, W, 3); grey files are repeated into R, G and B."""
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
        return metrics.as_rgb(np.asarray(image.convert("L" if image.mode in ("L", "LA") else "RGB")))


def ground_truth(pair: Pair, shape: tuple[int, ...]) -> np.ndarray:
    """HR cropped from the top-left to the output's size (Set14 has sides that are not multiples of 4)."""
    return read_image(pair.hr)[:shape[0], :shape[1]]


Upscaler = Callable[[bytes], np.ndarray]   # encoded LR image -> uint8 (4H, 4W, 3)


def service_upscaler(service: Service, model: str, ensemble: bool = False) -> Upscaler:
    """The model as the server runs it: upload bytes in, PNG out, decoded to uint8 RGB."""
    options = UpscaleOptions(model=model, ensemble=ensemble)
    return lambda data: read_image(service.upscale(data, options).data)


def array_upscaler(resize: Callable[[np.ndarray], np.ndarray]) -> Upscaler:
    return lambda data: resize(read_image(data))


@dataclass(frozen=True)
class SetResult:
    psnr: float
    ssim: float
    images: int
    seconds: float


def evaluate(upscale: Upscaler, set_pairs: list[Pair]) -> SetResult:
    """Mean per-image PSNR/SSIM of ``upscale`` over the pairs; seconds count the upscaling only."""
    scores, seconds = [], 0.0
    for pair in set_pairs:
        data = pair.lr.read_bytes()
        started = time.perf_counter()
        sr = upscale(data)
        seconds += time.perf_counter() - started
        scores.append(metrics.score(sr, ground_truth(pair, sr.shape), border=SCALE))
    return SetResult(float(np.mean([s.psnr for s in scores])), float(np.mean([s.ssim for s in scores])),
                     len(scores), seconds)
