"""Makes docs/comparison.png: a crop of a real photo, then an illustration, each as input, bicubic, and
every model, side by side.

    python -m bench.pictures [--models srgan,srresnet] [--output docs/comparison.png]

The whole sample photo goes through the service's own pipeline (same tiling, same
models as a request), and the same region is cut from each result, so no panel
shows edge effects that a lone crop would have. The illustration is drawn here (flat
colours, dark outlines, hatching), so that the picture holds nothing that may not be shipped.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.report import ROOT
from config import load_settings
from core.models.specs import SPECS
from core.options import UpscaleOptions
from core.service import Service

SOURCE = ROOT / "assets" / "test_examples" / "low_resolution" / "chelsea.png"
# The cat's eye and fur: sharp edges and fine texture, where the models differ most.
CROP = (6, 4, 70, 68)
CROP_SIDE = CROP[2] - CROP[0]
SCALE = 4
# Models that need a checkpoint the user supplies are left out by default.
DEFAULT_MODELS = tuple(name for name in SPECS if name != "max-srgan")
LABEL_HEIGHT = 34
GAP = 8
BACKGROUND = "white"
TEXT = (29, 35, 48)


Panels = list[tuple[str, Image.Image]]


def illustration() -> Image.Image:
    """A cartoon face drawn at 16x with smooth edges, brought to 4x with Lanczos (the "original"), then to
    the input size with bicubic, as the benchmark inputs are made."""
    side = 16 * CROP_SIDE
    ink = (30, 30, 40)
    big = Image.new("RGB", (side, side), (250, 244, 228))
    draw = ImageDraw.Draw(big)
    for x in range(-side, side, side // 24):  # a hatched background: fine lines the models must keep apart
        draw.line((x, side, x + side, 0), fill=(150, 170, 220), width=side // 120)
    draw.ellipse((side * 0.16, side * 0.12, side * 0.84, side * 0.8), fill=(255, 206, 84), outline=ink, width=side // 40)
    for left in (0.34, 0.56):
        draw.ellipse((side * left, side * 0.34, side * (left + 0.1), side * 0.46), fill=ink)
    draw.arc((side * 0.32, side * 0.42, side * 0.68, side * 0.68), 20, 160, fill=ink, width=side // 40)
    draw.rectangle((side * 0.06, side * 0.84, side * 0.94, side * 0.96), fill=(214, 64, 64), outline=ink,
                   width=side // 60)
    original = big.resize((SCALE * CROP_SIDE,) * 2, Image.Resampling.LANCZOS)
    return original.resize((CROP_SIDE,) * 2, Image.Resampling.BICUBIC)


def sources() -> list[tuple[bytes, tuple[int, int, int, int]]]:
    """(PNG bytes of the whole input, the crop shown) for the photo and the illustration."""
    buffer = io.BytesIO()
    illustration().save(buffer, "PNG")
    return [(SOURCE.read_bytes(), CROP), (buffer.getvalue(), (0, 0, CROP_SIDE, CROP_SIDE))]


def upscaled_rows(models: list[str]) -> list[Panels]:
    """One row per source: (label, picture) for the input, bicubic and each model that loads; a model that
    fails is reported and skipped."""
    service = Service.create(load_settings(models=",".join(models), default_model=models[0]))
    service.registry.load_all()
    states = service.registry.states()
    ready = [name for name in models if states[name] == "ready"]
    for name in sorted(set(models) - set(ready)):
        print(f"skipping {name}: {states[name]}", file=sys.stderr)
    return [_row(service, ready, data, crop) for data, crop in sources()]


def _row(service: Service, models: list[str], data: bytes, crop_box: tuple[int, int, int, int]) -> Panels:
    crop = Image.open(io.BytesIO(data)).convert("RGB").crop(crop_box)
    size = (crop.width * SCALE, crop.height * SCALE)
    output_box = tuple(v * SCALE for v in crop_box)
    panels = [("Input (nearest)", crop.resize(size, Image.Resampling.NEAREST)),
              ("Bicubic", crop.resize(size, Image.Resampling.BICUBIC))]
    for name in models:
        result = service.upscale(data, UpscaleOptions(model=name, scale=SCALE))
        panels.append((_short_title(name), Image.open(io.BytesIO(result.data)).convert("RGB").crop(output_box)))
    return panels


def _short_title(name: str) -> str:
    """The model's title without its parenthesised note: "SRGAN (perceptual)" -> "SRGAN"."""
    return SPECS[name].title.split(" (")[0]


def compose(rows: list[Panels]) -> Image.Image:
    """The rows one under another, each panel with its label underneath."""
    width, height = rows[0][0][1].size
    columns = max(len(row) for row in rows)
    row_height = height + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * width + (columns - 1) * GAP, len(rows) * row_height + (len(rows) - 1) * GAP),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for row_index, panels in enumerate(rows):
        top = row_index * (row_height + GAP)
        for index, (label, picture) in enumerate(panels):
            left = index * (width + GAP)
            sheet.paste(picture, (left, top))
            text_width = draw.textlength(label, font=font)
            draw.text((left + (width - text_width) / 2, top + height + 8), label, fill=TEXT, font=font)
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
    sheet = compose(upscaled_rows(models))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
