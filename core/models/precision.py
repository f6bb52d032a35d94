"""Which arithmetic a model runs in: f32, or a 16-bit float where the device and the model allow it.

On the CPU (OpenVINO), ``PRECISION=auto`` runs a model in bf16 only when both hold:

- the CPU multiplies bf16 natively (AVX512_BF16 or AMX); elsewhere OpenVINO emulates bf16, which is
  slower than fp32;
- the model's spec says ``bf16_ok``: its bf16 output was measured against its fp32 output
  (``python -m bench.precision``, docs/speed.md) and stayed within the bounds below.

``PRECISION=f32`` or ``bf16`` forces one precision for every model (bf16 then runs even where it is
emulated, or on a model that fails the bounds: the operator asked for it). The TensorFlow backends are
the fp32 reference.

On a GPU (PyTorch), ``PRECISION=auto`` runs each model in the precision its spec's ``cuda_precision``
names: fp16 or bf16 where ``python -m bench.gpu`` measured that model's output within
MIN_BF16_PSNR_DB of its f32 output on the test photos, f32 otherwise. PyTorch on the CPU runs f32
unless bf16 is forced.
"""
from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "f32", "bf16", "fp16")
# A model is bf16_ok when its bf16 output scores at least this PSNR against its fp32 output on the
# test photos, and its quality-table scores move by at most this much.
MIN_BF16_PSNR_DB = 50.0
MAX_QUALITY_SHIFT_DB = 0.05
# /proc/cpuinfo flags of native bf16 arithmetic: the AVX-512 bf16 dot products and AMX's bf16 tiles.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (every core of a machine has the same)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (the flags Linux reports)."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def resolve(setting: str, backend: str, bf16_ok: bool, native: bool) -> str:
    """The precision a model runs in: ``f32`` or ``bf16``."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; known: {PRECISIONS}")
    if setting == "f32":
        return "f32"
    if setting == "fp16":
        raise ValueError("PRECISION=fp16 runs on a GPU (DEVICE=cuda); the CPU backends take auto, f32 or bf16")
    if backend != "openvino":
        if setting == "bf16":
            raise ValueError(f"PRECISION=bf16 needs BACKEND=openvino, not {backend!r}")
        return "f32"
    if setting == "bf16":
        if not native:
            log.warning("PRECISION=bf16 on a CPU without native bf16: OpenVINO emulates it, slower than f32")
        return "bf16"
    return "bf16" if native and bf16_ok else "f32"


def resolve_torch(setting: str, device: str, cuda_precision: str) -> str:
    """The precision a model runs in on the PyTorch backend: ``f32``, ``bf16`` or ``fp16``."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; known: {PRECISIONS}")
    if device == "cuda":
        return cuda_precision if setting == "auto" else setting
    if setting == "fp16":
        raise ValueError("PRECISION=fp16 needs a GPU; PyTorch on the CPU takes auto, f32 or bf16")
    return "bf16" if setting == "bf16" else "f32"
