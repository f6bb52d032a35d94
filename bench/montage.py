"""The quality montages: crops of the evaluation images, LR, bicubic, each model and the HR side by side."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.report import DOCS
from harness.bicubic import matlab_bicubic
from harness.evaluation import SCALE, Upscaler, read_image

MONTAGE_FILE = DOCS / "quality-montage.png"
REALSR_MONTAGE_FILE = DOCS / "realsrset-montage.png"


@dataclass(frozen=True)
class Crop:
    path: str          # relative to the datasets folder
    x: int             # top-left of the crop in LR pixels
    y: int
    size: int          # side in LR pixels
    hr: str | None = None


QUALITY_CROPS = (
    Crop("Set14/LR_bicubic/X4/comicx4.png", 12, 8, 40, "Set14/HR/comic.png"),
    Crop("Set14/LR_bicubic/X4/zebrax4.png", 40, 8, 40, "Set14/HR/zebra.png"),
    Crop("Set14/LR_bicubic/X4/baboonx4.png", 70, 0, 40, "Set14/HR/baboon.png"),
    Crop("BSD100/LR_bicubic/X4/8023x4.png", 45, 12, 40, "BSD100/HR/8023.png"),
    Crop("BSD100/LR_bicubic/X4/108005x4.png", 40, 20, 40, "BSD100/HR/108005.png"),
    Crop("BSD100/LR_bicubic/X4/148026x4.png", 20, 70, 40, "BSD100/HR/148026.png"),
)
REALSR_CROPS = (
    Crop("RealSRSet/oldphoto2.png", 50, 45, 48),
    Crop("RealSRSet/0014.jpg", 60, 50, 48),
    Crop("RealSRSet/dped_crop00061.png", 10, 75, 48),
    Crop("RealSRSet/chip.png", 30, 25, 48),
    Crop("RealSRSet/Lincoln.png", 55, 60, 48),
)
CONTEXT = 16      # LR pixels of context around a crop, so that the models see it as inside an image
LABEL_HEIGHT = 18
GAP = 4


def _upscale_crop(upscale: Upscaler, lr: np.ndarray, crop: Crop) -> np.ndarray:
    """Upscale the crop with context around it (encoded as PNG, as an upload), then cut the crop out."""
    top, left = max(crop.y - CONTEXT, 0), max(crop.x - CONTEXT, 0)
    window = lr[top:crop.y + crop.size + CONTEXT, left:crop.x + crop.size + CONTEXT]
    buffer = io.BytesIO()
    Image.fromarray(window).save(buffer, "PNG")
    out = upscale(buffer.getvalue())
    y, x = (crop.y - top) * SCALE, (crop.x - left) * SCALE
    return out[y:y + crop.size * SCALE, x:x + crop.size * SCALE]


def _crop_row(crop: Crop, datasets_dir: Path, upscalers: dict[str, Upscaler]) -> list[np.ndarray]:
    lr = read_image(datasets_dir / crop.path)
    region = lr[crop.y:crop.y + crop.size, crop.x:crop.x + crop.size]
    side = crop.size * SCALE
    cells = [np.repeat(np.repeat(region, SCALE, axis=0), SCALE, axis=1),
             matlab_bicubic(lr)[crop.y * SCALE:crop.y * SCALE + side, crop.x * SCALE:crop.x * SCALE + side]]
    cells += [_upscale_crop(upscale, lr, crop) for upscale in upscalers.values()]
    if crop.hr is not None:
        hr = read_image(datasets_dir / crop.hr)
        cells.append(hr[crop.y * SCALE:crop.y * SCALE + side, crop.x * SCALE:crop.x * SCALE + side])
    return cells


def montage(crops: tuple[Crop, ...], datasets_dir: Path, upscalers: dict[str, Upscaler], with_hr: bool) -> Image.Image:
    """One row per crop: LR (nearest), bicubic, each model[, HR], labelled above the first row."""
    labels = ["LR (nearest)", "bicubic", *upscalers, *(["HR"] if with_hr else [])]
    rows = [_crop_row(crop, datasets_dir, upscalers) for crop in crops]
    side = max(cell.shape[0] for row in rows for cell in row)
    width = len(labels) * (side + GAP) - GAP
    sheet = Image.new("RGB", (width, LABEL_HEIGHT + len(rows) * (side + GAP) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(labels):
        draw.text((column * (side + GAP) + 4, 3), label, fill="black")
    for r, row in enumerate(rows):
        for column, cell in enumerate(row):
            sheet.paste(Image.fromarray(cell), (column * (side + GAP), LABEL_HEIGHT + r * (side + GAP)))
    return sheet
