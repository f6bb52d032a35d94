"""What the benchmarks share: the photo they upscale, and a process's memory."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bench.report import ROOT

PHOTO = ROOT / "assets" / "test_examples" / "low_resolution" / "astronaut.png"


def photo_png(side: int) -> bytes:
    """A real photo resampled to side x side: content like a user's, any size."""
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def gunicorn_worker(master: int) -> int:
    """The only worker of a gunicorn master."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return int(children[0])
