"""DEVICE and BACKEND: which backend a worker runs, that only its modules are imported, and the PyTorch
runner's f32 rerun of a window that overflowed."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from config import load_settings
from core import backends
from core.backends import Choice, DeviceError, choose
from core.backends.pytorch import TorchRunner
from core.models import precision
from core.models.specs import SPECS
from tests.conftest import ROOT

# What a worker process imports and runs, reported on stdout: the modules of each runtime it imported.
WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from app import create_app
    service = create_app(load_models=False).extensions["super_resolution"]
    service.registry.load_all()
    out = service.registry.get("{model}").predict(np.full((1, 24, 24, 3), 0.5, np.float32))
    runtimes = ("tensorflow", "keras", "openvino", "torch", "spandrel")
    print(json.dumps({{"choice": [service.registry.choice.backend, service.registry.choice.device],
                      "states": service.registry.states(), "shape": list(out.shape),
                      "imported": sorted(name for name in runtimes if name in sys.modules)}}))
""")


def run_worker(model: str, **environment: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "MODELS": model, "DEFAULT_MODEL": model, **environment}
    done = subprocess.run([sys.executable, "-c", WORKER.format(model=model)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_pytorch_worker_never_imports_tensorflow_keras_or_openvino(tmp_path):
    # A PyTorch file in MODELS_DIR runs on PyTorch itself, without OpenVINO's conversion.
    module, _ = SPECS["anime"].variants[0].torch_form(load_settings(), "anime")
    save_file({key: tensor.contiguous() for key, tensor in module.state_dict().items()}, tmp_path / "mine.safetensors")
    report = run_worker("srgan", BACKEND="pytorch", MODELS_DIR=str(tmp_path))
    assert report["choice"] == ["pytorch", "cpu"]
    assert report["states"] == {"srgan": "ready", "mine": "ready"}
    assert report["shape"] == [1, 96, 96, 3]
    assert report["imported"] == ["spandrel", "torch"] or report["imported"] == ["torch"]


@pytest.mark.slow
def test_a_cpu_worker_through_openvino_never_imports_torch(tmp_path):
    # A .pth refused by MODELS_DIR_PICKLES=false is refused when the folder is read, before torch is needed.
    (tmp_path / "refused.pth").write_bytes(b"never read")
    report = run_worker("srgan", MODELS_DIR=str(tmp_path), MODELS_DIR_PICKLES="false")  # DEVICE, BACKEND: auto
    assert report["choice"] == ["openvino", "cpu"]
    assert report["states"]["refused"].startswith("failed: refused.pth is a pickle, and MODELS_DIR_PICKLES=false")
    assert report["shape"] == [1, 96, 96, 3]
    assert "torch" not in report["imported"] and "spandrel" not in report["imported"]


def test_auto_picks_openvino_on_a_cpu_with_the_keras_path():
    assert choose(load_settings()) == Choice("openvino", "cpu")


def test_auto_picks_pytorch_where_only_pytorch_is_installed(monkeypatch):
    monkeypatch.setattr(backends, "keras_path_installed", lambda: False)
    assert choose(load_settings()) == Choice("pytorch", "cpu")


def test_auto_picks_cuda_where_pytorch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert choose(load_settings()) == Choice("pytorch", "cuda")
    assert choose(load_settings(device="cpu")) == Choice("openvino", "cpu")


def test_device_cuda_without_a_gpu_is_refused_with_the_reason():
    with pytest.raises(DeviceError, match="DEVICE=cuda, but PyTorch sees no NVIDIA GPU"):
        choose(load_settings(device="cuda"))


def test_a_keras_backend_on_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    with pytest.raises(DeviceError, match="DEVICE=cuda runs on the pytorch backend, not BACKEND=openvino"):
        choose(load_settings(device="cuda", backend="openvino"))


def test_a_keras_backend_without_the_keras_path_is_refused(monkeypatch):
    monkeypatch.setattr(backends, "keras_path_installed", lambda: False)
    with pytest.raises(DeviceError, match="BACKEND=tensorflow needs TensorFlow"):
        choose(load_settings(backend="tensorflow"))


def test_serve_stops_at_start_when_device_cuda_has_no_gpu():
    done = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin", "DEVICE": "cuda"})
    assert done.returncode == 2
    assert "DEVICE=cuda, but PyTorch sees no NVIDIA GPU" in done.stderr


@pytest.mark.parametrize(("setting", "device", "measured", "expected"), [
    ("auto", "cuda", "fp16", "fp16"), ("auto", "cuda", "f32", "f32"), ("f32", "cuda", "fp16", "f32"),
    ("bf16", "cuda", "fp16", "bf16"), ("auto", "cpu", "fp16", "f32"), ("bf16", "cpu", "fp16", "bf16"),
])
def test_pytorch_precision(setting, device, measured, expected):
    assert precision.resolve_torch(setting, device, measured) == expected


def test_fp16_is_refused_on_the_cpu_backends():
    with pytest.raises(ValueError, match="PRECISION=fp16 needs a GPU"):
        precision.resolve_torch("fp16", "cpu", "f32")
    with pytest.raises(ValueError, match="PRECISION=fp16 runs on a GPU"):
        precision.resolve("fp16", "openvino", True, True)


class Amplifier(torch.nn.Module):
    """Values past fp16's largest (65504) in fp16, finite in f32: an overflow as Real-ESRGAN's fp16 shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e5 - 1e5


def test_a_window_that_is_not_finite_in_fp16_runs_again_in_f32(caplog):
    batch = np.full((1, 4, 4, 3), 0.5, np.float32)
    runner = TorchRunner(Amplifier(), "cpu", "fp16", "amplifier")
    with caplog.at_level("WARNING", logger="core.backends.pytorch"):
        out = runner(batch)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, -5e4, rtol=1e-6)
    assert "amplifier: a fp16 window gave values that are not finite; running it again in f32" in caplog.text


def test_a_finite_fp16_window_is_not_run_again(caplog):
    runner = TorchRunner(torch.nn.Identity(), "cpu", "fp16", "identity")
    with caplog.at_level("WARNING", logger="core.backends.pytorch"):
        out = runner(np.full((2, 3, 5, 3), 0.25, np.float32))
    assert out.shape == (2, 3, 5, 3) and out.dtype == np.float32
    assert caplog.text == ""
