"""The machine a figure was measured on: its CPU, the flags that decide the arithmetic, its fp32 ceiling."""
from __future__ import annotations

import statistics
import time

import numpy as np

from core.backends import cpu_name
from core.models import precision

# The flags that say which vector and matrix arithmetic the CPU has.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                  "amx_int8")


def cpu_description() -> str:
    """'<model>, <n> cores, flags a b c' for the figures' captions."""
    import os

    flags = [flag for flag in RELEVANT_FLAGS if flag in precision.cpu_flags()]
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, flags {' '.join(flags) or 'none of ' + ' '.join(RELEVANT_FLAGS)}"


def measure_ceiling(n: int = 4096, repeats: int = 3) -> float:
    """fp32 GFLOP/s of numpy's BLAS sgemm on this process's cores: the practical ceiling of the convolutions."""
    a = np.random.default_rng(0).random((n, n), np.float32)
    a @ a
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def ceiling_in_fresh_process() -> float:
    """measure_ceiling in a new process without the OpenBLAS tuning variables, which would otherwise pin its
    kernel choice: the ceiling is OpenBLAS's own best on this CPU."""
    import os
    import subprocess
    import sys

    from bench.report import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    done = subprocess.run([sys.executable, "-c", "from bench.machine import measure_ceiling; print(measure_ceiling())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])
