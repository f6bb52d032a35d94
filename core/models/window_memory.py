"""A loaded model's window memory, measured on the device it runs on: what an operator's model (MODELS_DIR), which
no one measured with ``python -m bench.memory windows``, has its tiles sized by.

Each probe window runs once after the network's buffers were given back: on the CPU its cost is the peak RSS
(VmHWM, reset first) above the RSS before it, on CUDA the peak of PyTorch's allocations above those before it;
per window input pixel, the largest over the sides. Small windows overstate the per-pixel cost a little (the
backend's fixed buffers count over fewer pixels), which errs on the safe side.

The process is shared: the models loaded before this one may already serve while it loads. A request whose
memory grows during a probe raises the peak, which errs on the safe side too; one whose memory is given back
during it would lower the RSS the peak is counted from, so the lower of the RSS before and after the probe is
the base. VmHWM is the process's peak: after a probe it counts from the probe's start, not the worker's.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from core import memory
from core.models.runtime import Network, Predict

# In increasing order. Window attention and convolutions cost about the same per pixel at any side above their
# window, and a larger window costs much more time: HAT-L (PyTorch, 2 AMD EPYC cores) took 48,174 B/px at 64 px
# in 8 s, 53,239 at 96 px in 62 s and 46,318 at 128 px in 118 s.
PROBE_SIDES = (64, 96)

# One model's windows measured in separate processes differ by up to about a quarter (the heap's state, the
# threads' buffers), so a measurement counts with that much more before it sizes tiles.
MEASUREMENT_SPREAD_PERCENT = 125


def bytes_per_window_pixel(network: Network, device: str, sides: Iterable[int] = PROBE_SIDES) -> int:
    """The network's peak memory per window input pixel on ``device`` ("cpu": host memory, "cuda": GPU memory),
    the largest over probe windows of ``sides``."""
    peak_above = _cuda_peak_above if device == "cuda" else _host_peak_above
    network.release_memory()  # what earlier runs (the margin probe's) left is no window's
    largest = 0
    for side in sides:
        window = np.random.default_rng(side).random((1, side, side, 3), np.float32)
        largest = max(largest, -(-peak_above(network.predict, window) // (side * side)))
        network.release_memory()
    return largest


def _host_peak_above(predict: Predict, window: np.ndarray) -> int:
    # Pages that earlier runs freed but glibc kept resident would take the window's allocations without raising the
    # RSS, and hide them from the measurement.
    memory.trim_heap()
    before = memory.rss_bytes()
    memory.reset_peak_rss()
    predict(window)
    return max(memory.peak_rss_bytes() - min(before, memory.rss_bytes()), 0)


def _cuda_peak_above(predict: Predict, window: np.ndarray) -> int:
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    predict(window)
    torch.cuda.synchronize()
    return max(torch.cuda.max_memory_allocated() - min(before, torch.cuda.memory_allocated()), 0)
