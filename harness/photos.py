"""A real photo at any size: what the benchmarks and memory probes upscale."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

PHOTO = Path(__file__).resolve().parent.parent / "assets" / "test_examples" / "low_resolution" / "astronaut.png"


def photo_png(side: int) -> bytes:
    """The photo resampled to side x side (bicubic), as PNG: content like a user's, any size."""
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()
