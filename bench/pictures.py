"""Makes docs/comparison.png: a crop of a real photo as input, bicubic, and every model, side by side.

    python -m bench.pictures [--models srgan,srresnet] [--output docs/comparison.png]

The whole sample photo goes through the service's own pipeline (same tiling, same
models as a request), and the same region is cut from each result, so no panel
shows edge effects that a lone crop would have.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.report import ROOT
from config import load_settings
from core.models.registry import SPECS
from core.options import UpscaleOptions
from core.service import Service

SOURCE = ROOT / "assets" / "test_examples" / "low_resolution" / "chelsea.png"
# The cat's eye and fur: sharp edges and fine texture, where the models differ most.
CROP = (6, 4, 70, 68)
SCALE = 4
# Models that need a checkpoint the user supplies are left out by default.
DEFAULT_MODELS = tuple(name for name in SPECS if name != "max-srgan")
LABEL_HEIGHT = 34
GAP = 8
BACKGROUND = "white"
TEXT = (29, 35, 48)


def upscaled_panels(models: list[str]) -> list[tuple[str, Image.Image]]:
    """(label, picture) for the input, bicubic and each model that loads; a model that fails is reported and skipped."""
    photo = Image.open(SOURCE).convert("RGB")
    crop = photo.crop(CROP)
    size = (crop.width * SCALE, crop.height * SCALE)
    output_box = tuple(v * SCALE for v in CROP)
    panels = [("Input (nearest)", crop.resize(size, Image.Resampling.NEAREST)),
              ("Bicubic", crop.resize(size, Image.Resampling.BICUBIC))]
    service = Service.create(load_settings(models=",".join(models), default_model=models[0]))
    service.registry.load_all()
    states = service.registry.states()
    data = SOURCE.read_bytes()
    for name in models:
        if states[name] != "ready":
            print(f"skipping {name}: {states[name]}", file=sys.stderr)
            continue
        result = service.upscale(data, UpscaleOptions(model=name, scale=SCALE))
        panels.append((_short_title(name), Image.open(io.BytesIO(result.data)).convert("RGB").crop(output_box)))
    return panels


def _short_title(name: str) -> str:
    """The model's title without its parenthesised note: "SRGAN (perceptual)" -> "SRGAN"."""
    return SPECS[name].title.split(" (")[0]


def compose(panels: list[tuple[str, Image.Image]]) -> Image.Image:
    """The panels in one row, each with its label underneath."""
    width, height = panels[0][1].size
    sheet = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * GAP, height + LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for index, (label, picture) in enumerate(panels):
        left = index * (width + GAP)
        sheet.paste(picture, (left, 0))
        text_width = draw.textlength(label, font=font)
        draw.text((left + (width - text_width) / 2, height + 8), label, fill=TEXT, font=font)
    return sheet


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=16)
    except (TypeError, OSError):  # a Pillow built without FreeType has only the small bitmap font
        return ImageFont.load_default()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "comparison.png")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    sheet = compose(upscaled_panels(models))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
