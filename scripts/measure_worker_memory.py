"""Resident memory of one gunicorn worker with the default models loaded, before and after requests.

The figures size the Kubernetes memory request and limit (docs/deployment.md). Usage:

    .venv/bin/python scripts/measure_worker_memory.py [--side 500] [--models srgan,realsr]

Starts gunicorn with the default settings (one worker, every default model), waits for /ready, then
POSTs a side x side photo once per model named by --models and prints the worker's RSS and peak RSS.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.live_server import ROOT, live_server  # noqa: E402

SAMPLE = ROOT / "assets" / "test_examples" / "low_resolution" / "astronaut.png"


def worker_memory_mib(master_pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of the master's only worker, in MiB."""
    [worker] = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{worker}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def photo(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=500)
    parser.add_argument("--models", default="srgan", help="models to send one request each to, in order")
    args = parser.parse_args()
    from config import Settings

    default_models = Settings.model_fields["models"].default
    started = time.monotonic()
    with live_server(start_timeout_s=900, models=default_models, workers=1) as server:
        print(f"models {default_models} ready in {time.monotonic() - started:.0f} s: "
              f"{worker_memory_mib(server.process.pid)}", flush=True)
        image = photo(args.side)
        for model in args.models.split(","):
            begun = time.monotonic()
            response = requests.post(f"{server.url}/model/predict", data={"model": model}, timeout=1800,
                                     files={"image": ("photo.png", image, "image/png")})
            response.raise_for_status()
            print(f"{model} {args.side}x{args.side} -> {response.headers['X-Output-Size']} "
                  f"in {time.monotonic() - begun:.1f} s: {worker_memory_mib(server.process.pid)}", flush=True)


if __name__ == "__main__":
    main()
