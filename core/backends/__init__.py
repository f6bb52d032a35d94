"""The inference backends behind one seam: a model's weights + a device + a precision -> a runner.

A runner takes NHWC float32 batches in [0, 1] (a list of arrays for a graph of several inputs) and
gives the same back; ``release_memory`` hands back what it keeps between calls. Each backend is one
module of this package, imported only when chosen, so a worker on the PyTorch path never imports
TensorFlow, Keras or OpenVINO, and a worker on the CPU path through OpenVINO never imports torch:

- ``openvino``: the Keras graph converted once and run by OpenVINO's CPU plugin (the CPU default).
- ``tensorflow`` / ``xla``: the Keras graph itself, the reference the others are held to.
- ``pytorch``: spandrel's architectures (and the project's SRResNet) on CUDA, or on the CPU where
  OpenVINO is not installed (``make run-gpu`` on a machine without a GPU).

``DEVICE`` picks the device and ``BACKEND`` the runtime (docs/deployment.md); ``choose`` resolves both.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from config import Settings

# OpenVINO's converter sends usage events to Google Analytics, at import and at each conversion, unless a consent
# file in the home folder says no; each event is sent from a process forked off one of its threads, and such a
# child, stuck on a lock another thread held at the fork, was seen to outlive sr-upscale's run. The service sends
# nothing: with the telemetry package unimportable, the converter takes its own stub. This package is imported
# before any module here imports openvino.
sys.modules.setdefault("openvino_telemetry", None)

KERAS_BACKENDS = ("tensorflow", "xla", "openvino")
BACKENDS = (*KERAS_BACKENDS, "pytorch")
# The module of each backend (xla is TensorFlow with compilation).
MODULES = {"tensorflow": "tensorflow", "xla": "tensorflow", "openvino": "openvino", "pytorch": "pytorch"}
# Files the NVIDIA driver creates: their absence says "no GPU" without importing torch.
NVIDIA_DEVICE_FILES = (Path("/dev/nvidiactl"), Path("/proc/driver/nvidia/version"))

Batch = np.ndarray | list[np.ndarray]


class Runner(Protocol):
    """A network compiled by one backend for one device and precision."""

    def __call__(self, batch: Batch) -> Batch: ...

    def release_memory(self) -> None: ...


class DeviceError(ValueError):
    """DEVICE or BACKEND cannot be honoured on this machine; the service refuses to start."""


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str  # "cpu" or "cuda"

    @property
    def module(self) -> ModuleType:
        """The backend's module, imported now."""
        return importlib.import_module(f"core.backends.{MODULES[self.backend]}")


def keras_path_installed() -> bool:
    """Whether the CPU path's packages are here (``make run``, the CPU image, ``make test``)."""
    return all(find_spec(name) is not None for name in ("keras", "tensorflow", "openvino"))


def torch_installed() -> bool:
    return find_spec("torch") is not None


def cuda_available() -> bool:
    """Whether PyTorch sees a GPU; torch is imported only where the driver's files say one may be there."""
    if not torch_installed() or not any(path.exists() for path in NVIDIA_DEVICE_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def choose(settings: Settings) -> Choice:
    """The backend and device of this worker, from DEVICE and BACKEND; ``DeviceError`` says why not."""
    device = _device(settings.device)
    backend = settings.backend
    if backend == "auto":
        backend = "openvino" if device == "cpu" and keras_path_installed() else "pytorch"
    if backend == "pytorch" and not torch_installed():
        raise DeviceError("BACKEND=pytorch needs PyTorch: install requirements-torch.txt (make run-gpu) "
                          "or use the GPU image")
    if backend in KERAS_BACKENDS and not keras_path_installed():
        raise DeviceError(f"BACKEND={backend} needs TensorFlow, Keras and OpenVINO (requirements.txt, make run); "
                          f"this installation has PyTorch only: use BACKEND=auto or pytorch")
    if device == "cuda" and backend != "pytorch":
        raise DeviceError(f"DEVICE=cuda runs on the pytorch backend, not BACKEND={backend}")
    return Choice(backend, device)


def _device(setting: str) -> str:
    if setting == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if setting == "cuda":
        reason = ("PyTorch is not installed (make run-gpu installs it)" if not torch_installed()
                  else "PyTorch sees no NVIDIA GPU (is the driver loaded, and the container started with --gpus?)")
        raise DeviceError(f"DEVICE=cuda, but {reason}; DEVICE=auto or cpu serves on the CPU")
    return "cpu"


def cpu_name() -> str:
    """The processor's model name as Linux reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"
