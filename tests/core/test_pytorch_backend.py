"""Every built-in model served through the PyTorch backend (on the CPU here, as ``make run-gpu`` serves it on a
machine without a GPU): loaded from the packaged weights, seam-free when tiled, answering /model/predict; the
runner's device lock, out-of-memory error and fp16 rerun."""
from __future__ import annotations

import io
import weakref
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from config import load_settings
from core.backends import Choice, pytorch
from core.errors import DeviceFailed, OutOfDeviceMemory
from core.models.runtime import f32_copy_bytes
from core.models.specs import PACKAGED, SPECS
from tests.conftest import decode, loaded_app, sample_bytes
from tests.core.test_zoo import lowest_seam_psnr

BUILT_IN = PACKAGED


@pytest.fixture(scope="module")
def pytorch_app():
    return loaded_app(load_settings(models=",".join(BUILT_IN), default_model="srgan", backend="pytorch"))


@pytest.fixture(scope="module")
def registry(pytorch_app):
    return pytorch_app.extensions["super_resolution"].registry


@pytest.mark.slow
def test_every_built_in_model_loads_on_pytorch_in_f32_on_the_cpu(registry):
    assert registry.states() == {name: "ready" for name in BUILT_IN}
    assert {entry["id"]: entry["precision"] for entry in registry.describe()} == {name: "f32" for name in BUILT_IN}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "scale"), [("span", 2), ("span", 4), ("anime", 4),
                                              ("realcugan", 2), ("realcugan", 3), ("realcugan", 4)])
def test_tiles_match_the_whole_image_on_pytorch(registry, model, scale):
    """Real-CUGAN's whole-image averages, borders and alignment hold on this backend as on the CPU path."""
    network = registry.get(model, scale)
    assert network.scale == scale
    assert lowest_seam_psnr(network) >= 45


@pytest.mark.slow
def test_predict_and_metadata_on_pytorch(pytorch_app):
    client = pytorch_app.test_client()
    answer = client.post("/model/predict", data={"image": (io.BytesIO(sample_bytes("camera.png")), "camera.png"),
                                                 "model": "anime"}, content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert decode(answer.data).size == (384, 384)
    device = client.get("/model/metadata").get_json()["device"]
    assert device["kind"] == "cpu" and device["backend"] == "pytorch"
    assert device["runtime"].startswith("PyTorch ")
    assert client.get("/ready").get_json()["device"] == device


class Watched(torch.nn.Module):
    """A real network whose outputs are watched (weak references), and which can run out of memory after
    allocating as a window's activations would."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.outputs, self.out_of_memory = module, [], False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        self.outputs.append(weakref.ref(out))
        if self.out_of_memory:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return out


class ReleaseWatch(pytorch.DeviceLock):
    """The device lock, noting at each release which watched outputs are still alive."""

    def __init__(self, watched: Watched) -> None:
        super().__init__()
        self.watched, self.alive_at_release = watched, []

    @contextmanager
    def held(self):
        with super().held():
            try:
                yield
            finally:
                self.alive_at_release.append(sum(ref() is not None for ref in self.watched.outputs))


@pytest.fixture()
def watched_anime(monkeypatch):
    """anime's packaged network on the PyTorch runner, its outputs watched at the device lock's release."""
    spec = SPECS["anime"]
    network = pytorch.network(spec, spec.variants[-1], load_settings(), Choice("pytorch", "cpu"))
    watched = Watched(network.run.module)
    lock = ReleaseWatch(watched)
    monkeypatch.setitem(pytorch.DEVICE_LOCKS, "cpu", lock)
    return pytorch.TorchRunner(watched, "cpu", "f32", "anime"), watched, lock


def test_no_tensor_of_a_window_outlives_the_device_lock(watched_anime):
    """Another request's window takes the device's memory once the lock is free: a window's tensors must be gone
    by then, after its result and after an out-of-memory error alike (whose traceback travels on to the retry)."""
    runner, watched, lock = watched_anime
    window = np.random.default_rng(0).random((1, 24, 20, 3), dtype=np.float32)
    assert runner(window).shape == (1, 96, 80, 3)
    assert runner.levels(window, 255).dtype == np.uint8
    watched.out_of_memory = True
    with pytest.raises(OutOfDeviceMemory, match="no memory for a window of 1 x 20x24 pixels on model anime"):
        runner(window)
    assert lock.alive_at_release == [0, 0, 0]


def test_an_error_other_than_out_of_memory_stays_itself(watched_anime):
    """Only torch's out-of-memory error means smaller tiles: any other is the server's fault (500), not a 503."""
    runner, watched, _ = watched_anime
    watched.module = torch.nn.Conv2d(4, 4, 3)  # takes 4 channels: RGB windows raise a RuntimeError
    with pytest.raises(RuntimeError, match="channels") as raised:
        runner(np.zeros((1, 8, 8, 3), np.float32))
    assert not isinstance(raised.value, OutOfDeviceMemory)


# What torch 2.14 raises where a CUDA call other than its caching allocator's has no memory (C10_CUDA_CHECK's and
# TORCH_CUDABLAS_CHECK's wording): a pinned block for the copy back, cuBLAS's workspace.
PINNED_BLOCK_FAILED = torch.AcceleratorError(
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1")
CUBLAS_ALLOC_FAILED = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")


@pytest.mark.parametrize("error", [PINNED_BLOCK_FAILED, CUBLAS_ALLOC_FAILED], ids=["pinned", "cublas"])
def test_cuda_calls_without_memory_are_out_of_device_memory_too(watched_anime, monkeypatch, error):
    """Only torch.OutOfMemoryError was mapped: a pinned block or a library's workspace that CUDA had no memory for
    raises a plain RuntimeError (torch.AcceleratorError), which made a 500 instead of smaller tiles or a 503."""
    runner, watched, lock = watched_anime

    def copy_back_fails(tensor):
        raise error

    monkeypatch.setattr(runner, "_to_host", copy_back_fails)
    with pytest.raises(OutOfDeviceMemory, match="no memory for a window of 1 x 20x24 pixels on model anime"):
        runner(np.zeros((1, 24, 20, 3), np.float32))
    assert lock.alive_at_release == [0]


# What torch raises after a kernel read outside its memory: CUDA's sticky error, every later call of the process
# failing the same way.
ILLEGAL_ADDRESS = ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
                   "reported at some other API call, so the stacktrace below might be incorrect.")


def illegal_address(tensor):
    raise torch.AcceleratorError(ILLEGAL_ADDRESS)


def test_a_cuda_error_that_the_device_survives_stays_itself(watched_anime, monkeypatch):
    """An error after which the device still runs (here the CPU, asked for real) is the server's fault (500), and
    the next window runs."""
    runner, _, lock = watched_anime
    monkeypatch.setattr(runner, "_to_host", illegal_address)
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        runner(np.zeros((1, 8, 8, 3), np.float32))
    monkeypatch.setattr(runner, "_to_host", lambda tensor: tensor)
    assert runner(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 32, 32, 3)
    assert lock.failure is None


def test_a_cuda_error_that_breaks_the_device_fails_its_window_and_every_later_one_at_once(watched_anime, monkeypatch):
    """After CUDA's sticky errors every call of the process fails: the window that met it, and each after it,
    end with DeviceFailed (503) without touching the device again; it was a bare RuntimeError (500), request
    after request."""
    runner, watched, lock = watched_anime
    monkeypatch.setattr(runner, "_to_host", illegal_address)
    monkeypatch.setattr(pytorch, "device_works", lambda device: False)
    window = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(DeviceFailed, match=r"^the GPU failed \(CUDA error: an illegal memory access was "
                                           r"encountered\) .* it restarts with a fresh GPU context; retry$") as raised:
        runner(window)
    assert raised.value.status == 503 and lock.failure == raised.value.message
    monkeypatch.setattr(runner, "_to_host", lambda tensor: tensor)
    runs = len(watched.outputs)
    with pytest.raises(DeviceFailed, match="the GPU failed"):
        runner.levels(window, 255)
    assert len(watched.outputs) == runs  # the network did not run again
    assert lock.alive_at_release == [0, 0]


def test_a_device_that_runs_is_found_working():
    assert pytorch.device_works(torch.device("cpu"))


@pytest.mark.parametrize(("error", "returned"), [(PINNED_BLOCK_FAILED, True), (CUBLAS_ALLOC_FAILED, True),
                                                 (torch.OutOfMemoryError("CUDA out of memory."), False)],
                         ids=["pinned", "cublas", "torch"])
def test_after_a_cuda_call_without_memory_torch_gives_its_cached_blocks_back(monkeypatch, error, returned):
    """torch's caching allocators keep freed device and pinned blocks for torch alone, and empty themselves only
    when their own allocation fails: after another CUDA call had no memory, the retry would find what they cache
    still taken. They are given back then (torch.OutOfMemoryError comes after torch emptied its cache itself)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("device"))
    monkeypatch.setattr(torch.accelerator, "empty_host_cache", lambda: calls.append("pinned"))
    runner = pytorch.TorchRunner(torch.nn.Identity(), "cpu", "f32", "identity")
    runner.device = torch.device("cuda")  # the runner as on a GPU; the window fails before it reaches one

    def fails(arrays, finish):
        raise error

    monkeypatch.setattr(runner, "_on_device", fails)
    with pytest.raises(OutOfDeviceMemory):
        runner(np.zeros((1, 8, 8, 3), np.float32))
    assert calls == (["device", "pinned"] if returned else [])


class Amplifier(torch.nn.Module):
    """Past fp16's largest value (65504) where a window's values are large, finite elsewhere: Real-ESRGAN's fp16
    overflow in some windows of an image and not in others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1000


def test_a_batch_runs_again_in_f32_only_its_windows_that_overflowed():
    """TILE_BATCH > 1 gives each window what it gives one window at a time: in fp16 where fp16 is finite."""
    runner = pytorch.TorchRunner(Amplifier(), "cpu", "fp16", "amplifier")
    quiet, loud = np.full((1, 4, 4, 3), 0.1234, np.float32), np.full((1, 4, 4, 3), 70, np.float32)
    alone = [runner(quiet), runner(loud)]
    together = runner(np.concatenate([quiet, loud]))
    assert np.isfinite(together).all()
    np.testing.assert_array_equal(together, np.concatenate(alone))
    assert alone[0][0, 0, 0, 0] != np.float32(0.1234) * 1000  # the quiet window in fp16, not run again in f32


class Gain(torch.nn.Module):
    """The Amplifier with its gain as a weight, which an f32 copy holds in 4 bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1000.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def test_an_f32_rerun_past_its_planned_room_is_refused_before_its_copy_is_placed(monkeypatch):
    """The f32 rerun of a 16-bit window that overflowed placed an f32 copy of the weights and ran the window in f32
    (up to 2.7 times the 16-bit window's memory) beyond what the budget sized the tile for. Held to the room planned
    for it, a rerun past it is the GPU's out-of-memory error (the pipeline retries smaller) before anything is placed,
    and the call's 16-bit outputs are gone by the lock's release; within the room it runs as before."""
    runner = pytorch.TorchRunner(Watched(Gain()), "cpu", "fp16", "gain")
    lock = ReleaseWatch(runner.module)
    monkeypatch.setitem(pytorch.DEVICE_LOCKS, "cpu", lock)
    placed, place = [], runner._f32_module
    monkeypatch.setattr(runner, "_f32_module", lambda: placed.append(True) or place())
    loud = np.full((2, 4, 4, 3), 70, np.float32)  # both windows past fp16's largest value
    # The f32 copy of the gain, two windows of 4x4 at 100 bytes a pixel in f32, and their fp16 outputs beside.
    need = 4 + 2 * 16 * 100 + 2 * 16 * 3 * 2
    assert runner.f32_copy_bytes == 4
    runner.plan_rerun(need - 1, 100)
    with pytest.raises(OutOfDeviceMemory, match=r"^the GPU has no room for the f32 rerun of 2 fp16 windows of 4x4 "
                                                r"pixels whose output was not finite on model gain: it needs 1 MiB"):
        runner(loud)
    assert placed == [] and lock.out_of_memory == 1 and lock.alive_at_release == [0]
    runner.plan_rerun(need, 100)
    np.testing.assert_array_equal(runner(loud), np.full((2, 4, 4, 3), 70000, np.float32))
    assert placed == [True]


def test_an_operator_files_runner_takes_the_rerun_plan_through_its_size_fit():
    """A MODELS_DIR PyTorch file's runner is wrapped to fit its architecture's sizes: the network's plan reached no
    runner, and its f32 reruns went unplanned."""
    from spandrel import SizeRequirements

    from core.models.runtime import Network
    from core.models.torch_files import SizeFit

    network = Network("gain", SizeFit(pytorch.TorchRunner(Gain(), "cpu", "fp16", "gain"), SizeRequirements()), 0, 1)
    assert f32_copy_bytes(network.run) == 4
    network.plan_rerun(4 + 16 * 100 + 16 * 3 * 2 - 1, 100)  # a byte short of one 4x4 window's rerun
    with pytest.raises(OutOfDeviceMemory, match="no room for the f32 rerun of 1 fp16 window of 4x4 pixels"):
        network.predict(np.full((1, 4, 4, 3), 70, np.float32))


def _allocated_bytes(call) -> int:
    """The bytes torch allocates on the CPU during ``call()``, freed or not."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        call()
    return sum(event.self_cpu_memory_usage for event in profiled.events() if event.self_cpu_memory_usage > 0)


def test_rounding_to_levels_where_the_network_ran_allocates_only_the_levels_beside_the_float_path():
    """The runner's levels were the float output clamped, multiplied and rounded out of place: three more float32
    tensors of the output's size where the network ran (two beside the output at once), which the GPU memory per
    window pixel, measured on the float path, does not count. In place, only the levels themselves are new."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, padding=1), torch.nn.PixelShuffle(4)).eval()
    runner = pytorch.TorchRunner(module, "cpu", "f32")
    batch = np.random.default_rng(0).random((1, 100, 100, 3), np.float32)
    floats = runner(batch)
    levels = runner.levels(batch, 255)
    np.testing.assert_array_equal(levels, np.clip(np.rint(floats * np.float32(255)), 0, 255))
    extra = _allocated_bytes(lambda: runner.levels(batch, 255)) - _allocated_bytes(lambda: runner(batch))
    assert levels.nbytes <= extra < levels.nbytes + floats.nbytes // 2  # the uint8 levels, a quarter of the floats
