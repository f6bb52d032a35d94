"""The PyTorch backend (``BACKEND=pytorch``): spandrel's architectures and the project's SRResNet, holding
the packaged weights, on CUDA in the precision measured for each model, or on the CPU in f32.

A GPU runs 16-bit floats at several times its f32 rate, but fp16 overflows where a network's activations
grow large (Real-ESRGAN's black fp16 images): a window whose output is not finite is run again in f32,
and the log says so. On a GPU that rerun is held to the memory budget (``plan_rerun``): one that would take more
than GPU_MEMORY_BUDGET_MB leaves beside the loaded models raises ``OutOfDeviceMemory`` before it places anything,
as a window the GPU has no memory for does, and the pipeline retries in smaller windows.

A device runs one window at a time (its lock): requests in flight together (INFERENCE_SLOTS) overlap
their decoding and encoding on the host with another's network, not two networks. A window the GPU has
no memory for raises ``OutOfDeviceMemory``, on which the pipeline retries with smaller tiles. Any other error
that leaves the device unable to run anything more (CUDA's sticky errors) raises ``DeviceFailed``, and every
later window of the process fails at once with it: the service then has its worker replaced, or the server stopped
where it failed while the models loaded (core/service.py).
"""
from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from core import memory
from core.backends import Batch, Choice, cpu_name
from core.errors import DeviceFailed, OutOfDeviceMemory
from core.memory import MEBIBYTE, PINNED_COPY_MAX_BYTES
from core.models import precision
from core.models.runtime import Network

if TYPE_CHECKING:
    from config import Settings
    from core.models.specs import ModelSpec, Variant

log = logging.getLogger(__name__)

Output = torch.Tensor | list[torch.Tensor]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What torch's messages say where a CUDA call other than its caching allocator's had no memory: cudaGetErrorString
# of cudaErrorMemoryAllocation, and the cuBLAS and cuDNN statuses of a failed allocation.
OUT_OF_MEMORY_SIGNS = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
# The integer type of each bit depth's levels, by its largest level.
LEVEL_DTYPES = {255: torch.uint8, 65535: torch.uint16}


class DeviceLock:
    """One device's networks run one window at a time; the seconds they held it are its busy time, and the calls
    it had no memory for are counted (under the lock). ``failure``: why the device can run nothing more in this
    process, once it failed so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.out_of_memory = 0
        self.failure: str | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            started = time.perf_counter()
            try:
                yield
            finally:
                self.busy_s += time.perf_counter() - started


DEVICE_LOCKS: dict[str, DeviceLock] = {"cpu": DeviceLock(), "cuda": DeviceLock()}


class TorchRunner:
    """A module on one device in one precision, taking and giving NHWC float32 numpy batches."""

    def __init__(self, module: torch.nn.Module, device: str, arithmetic: str, name: str = "") -> None:
        self.name, self.device, self.precision = name, torch.device(device), arithmetic
        # The f32 module on the CPU stays the source of the f32 rerun of a window that overflowed.
        self._source = module
        self._module = _placed(module, self.device, arithmetic)
        # The f32 copy's weights, which a rerun places beside the 16-bit module's; none in f32, which reruns nothing.
        self.f32_copy_bytes = 0 if arithmetic == "f32" else _f32_bytes(module)
        # GPU memory an f32 rerun may take, and its windows' f32 bytes per pixel (``plan_rerun``); None: unplanned
        # (on the CPU no device budget holds it).
        self._rerun_room: int | None = None
        self._f32_bytes_per_window_pixel = 0

    def plan_rerun(self, room: int, f32_bytes_per_window_pixel: int) -> None:
        """Hold each f32 rerun to ``room`` bytes of the device (what GPU_MEMORY_BUDGET_MB leaves beside the loaded
        models), its windows counted at ``f32_bytes_per_window_pixel``: the tile was sized for the 16-bit window,
        whose f32 rerun takes up to 2.7 times as much (bench.gpu's figures), with the f32 copy's weights."""
        self._rerun_room, self._f32_bytes_per_window_pixel = room, f32_bytes_per_window_pixel

    def __call__(self, batch: Batch) -> Batch:
        """The output for a batch (a list of arrays for a graph of several inputs); a list for several outputs."""
        several, hosted = self._hosted(batch, lambda tensor: tensor)
        outputs = [tensor.numpy() for tensor in hosted]
        return outputs if several else outputs[0]

    def levels(self, batch: Batch, max_value: int) -> np.ndarray:
        """The output as NHWC integer levels of ``max_value`` (255: uint8, 65535: uint16), rounded on the
        device: the copy back is a quarter (8 bits) or half (16 bits) of the float32 one. The same levels as
        rounding the float output on the host: the same float32 operations, in the same order."""
        dtype = LEVEL_DTYPES[max_value]
        # In place on the float32 output: out of place, each step made another output-size float32 tensor on the
        # device, two of them beside the output at once, which the measured memory per window pixel (bench.gpu's
        # float path) does not hold: for anime's 500² window, 2 x 46 MiB (2000² x 3 float32) beside its 116 MiB peak.
        _, hosted = self._hosted(batch, lambda tensor: tensor.clamp_(0, 1).mul_(max_value).round_().to(dtype))
        return hosted[0].numpy()

    def _hosted(self, batch: Batch, finish: Callable[[torch.Tensor], torch.Tensor]) -> tuple[bool, list[torch.Tensor]]:
        """Run the batch in the device's lock and copy each output, as ``finish`` leaves it, to the host: whether
        the network gave several outputs, and the host's tensors. No tensor on the device outlives the lock, on
        success or on error: the next request's window takes the device's memory as soon as the lock is free,
        and the memory budget counts one window at a time."""
        arrays = batch if isinstance(batch, list) else [batch]
        lock = DEVICE_LOCKS[self.device.type]
        with (lock.held(), self._failed_device(lock), self._out_of_memory(arrays[0].shape),
              torch.inference_mode()):
            return self._on_device(arrays, finish)

    def _on_device(self, arrays: list[np.ndarray], finish: Callable[[torch.Tensor], torch.Tensor]
                   ) -> tuple[bool, list[torch.Tensor]]:
        """``_hosted``'s work under the lock, in a frame of its own: its device tensors go when it returns, or,
        when it raises, when ``_out_of_memory`` clears the frames of the traceback."""
        result = self._finite(self._run(self._module, arrays, DTYPES[self.precision]), arrays)
        hosted = [self._to_host(finish(_nhwc_f32(tensor))) for tensor in _tensors(result)]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return not isinstance(result, torch.Tensor), hosted

    def _finite(self, result: Output, arrays: list[np.ndarray]) -> Output:
        """``result`` with each window whose 16-bit output is not finite run again in f32; the batch's other
        windows keep their 16-bit output, as they would have run one at a time (TILE_BATCH=1)."""
        if self.precision == "f32":
            return result
        outputs = _tensors(result)
        finite = torch.stack([torch.isfinite(tensor).flatten(1).all(1) for tensor in outputs]).all(0)
        if bool(finite.all()):
            return result
        log.warning("model %s: a %s window gave values that are not finite; running it again in f32",
                    self.name, self.precision)
        again = torch.nonzero(~finite).flatten().cpu().numpy()
        self._check_rerun_room(arrays[0].shape, len(again), outputs)
        rerun = _tensors(self._run(self._f32_module(), [array[again] for array in arrays], torch.float32))
        # In f32, which holds what overflowed 16 bits; the copy back converts every output to f32 anyway.
        merged = [tensor.to(torch.float32) for tensor in outputs]
        for tensor, redone in zip(merged, rerun):
            tensor[torch.from_numpy(again).to(tensor.device)] = redone
        return merged[0] if isinstance(result, torch.Tensor) else merged

    def _check_rerun_room(self, shape: tuple[int, ...], reruns: int, outputs: list[torch.Tensor]) -> None:
        """``OutOfDeviceMemory`` where the f32 rerun of ``reruns`` windows of ``shape``'s pixels (as the network runs
        them), beside the call's 16-bit ``outputs``, needs more than the planned room: before the f32 copy is placed,
        so that the budget is not passed, and the pipeline's retry runs smaller windows (or fewer a call)."""
        if self._rerun_room is None:
            return
        held = sum(tensor.numel() * tensor.element_size() for tensor in outputs)
        need = memory.rerun_bytes(self.f32_copy_bytes, self._f32_bytes_per_window_pixel, shape[1] * shape[2], reruns,
                                  held)
        if need > self._rerun_room:
            raise OutOfDeviceMemory(
                f"the GPU has no room for the f32 rerun of {reruns} {self.precision} window{'s' * (reruns > 1)} of "
                f"{shape[2]}x{shape[1]} pixels whose output was not finite on model {self.name}: it needs "
                f"{memory.mib_up(need)} MiB, and GPU_MEMORY_BUDGET_MB leaves {self._rerun_room // MEBIBYTE} MiB "
                f"beside the loaded models")

    @property
    def module(self) -> torch.nn.Module:
        """The module as placed on the device, in the runner's precision."""
        return self._module

    def release_memory(self) -> None:
        """Nothing to give back: PyTorch returns a CPU call's buffers when it ends, and on a GPU its caching
        allocator reuses one model's blocks for the next request's windows."""

    @contextmanager
    def _out_of_memory(self, shape: tuple[int, ...]) -> Iterator[None]:
        try:
            yield
        except OutOfDeviceMemory as error:  # an f32 rerun past the planned room, refused before it ran
            traceback.clear_frames(error.__traceback__)  # the call's 16-bit outputs, as below
            DEVICE_LOCKS[self.device.type].out_of_memory += 1
            log.warning("model %s: %s", self.name, error.message)
            raise
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            # The traceback's frames hold the failed window's device tensors, and the error travels on to the
            # pipeline's retry or to the 503 after the lock is free: cleared here, their blocks go back to
            # torch's cache before another request's window runs.
            traceback.clear_frames(error.__traceback__)
            DEVICE_LOCKS[self.device.type].out_of_memory += 1
            if not isinstance(error, torch.OutOfMemoryError):
                # Memory that torch's caching allocators did not ask for ran out (a library's workspace, pinned
                # host memory): what they cache is of no use to it until given back, and only theirs empty
                # themselves before they fail (torch itself does, before raising its OutOfMemoryError).
                _return_cached_memory(self.device)
            log.warning("model %s: %s: %s", self.name, type(error).__name__, str(error).partition("\n")[0])
            raise OutOfDeviceMemory(f"the GPU has no memory for a window of {shape[0]} x {shape[2]}x{shape[1]} "
                                    f"pixels on model {self.name}") from error

    @contextmanager
    def _failed_device(self, lock: DeviceLock) -> Iterator[None]:
        """``DeviceFailed`` for an error after which the device runs nothing more (the first, and every window
        after it, at once); any other error as it came, the device serving on."""
        if lock.failure is not None:
            raise DeviceFailed(lock.failure)
        try:
            yield
        except RuntimeError as error:
            if device_works(self.device):
                raise
            traceback.clear_frames(error.__traceback__)
            cause = str(error).partition("\n")[0]
            lock.failure = (f"the GPU failed ({cause}) and this worker can run nothing more on it: it restarts "
                            f"with a fresh GPU context; retry")
            log.error("model %s: %s: %s", self.name, type(error).__name__, str(error))
            raise DeviceFailed(lock.failure) from error

    def _run(self, module: torch.nn.Module, arrays: list[np.ndarray], dtype: torch.dtype) -> Output:
        return module(*(self._tensor(array, dtype) for array in arrays))

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on the host. From a GPU, through pinned memory up to PINNED_COPY_MAX_BYTES: pageable copies
        ran at a tenth of the speed on the H200 (40 ms for a 2000² float32 result, docs/gpu.md), but torch keeps
        every pinned block cached, and the cap bounds that cache (core/memory.py)."""
        if self.device.type != "cuda":
            return tensor
        if tensor.numel() * tensor.element_size() > PINNED_COPY_MAX_BYTES:
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # NHWC permuted to NCHW is the channels-last layout that cuDNN's and oneDNN's fast kernels read.
        tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32))
        return tensor.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(dtype)

    def _f32_module(self) -> torch.nn.Module:
        """The module in f32 for one rerun, placed anew each time: kept, its weights would stay on the GPU
        beside the ones the memory budget counts (ModelRegistry.device_resident); reruns are rare, and the copy
        takes milliseconds. Its weights count in the rerun's room instead (``f32_copy_bytes``)."""
        return self._module if self.precision == "f32" else _placed(self._source, self.device, "f32")


def is_out_of_memory(error: RuntimeError) -> bool:
    """Whether torch's error means that memory ran out: its caching allocator's ``torch.OutOfMemoryError``, or the
    RuntimeError (``torch.AcceleratorError`` since torch 2.8) of another CUDA call that had no memory, worded from
    its status: ``cudaHostAlloc`` of a pinned block (at::cuda's CachingHostAllocator checks it with C10_CUDA_CHECK:
    "CUDA error: out of memory"), or cuBLAS's and cuDNN's own allocations."""
    return isinstance(error, torch.OutOfMemoryError) or any(sign in str(error) for sign in OUT_OF_MEMORY_SIGNS)


def device_works(device: torch.device) -> bool:
    """Whether the device still runs work for this process, asked after an error that is not out-of-memory.

    CUDA's runtime API documents errors that leave "the process in an inconsistent state and any further CUDA
    work will return the same error. To continue using CUDA, the process must be terminated and relaunched": an
    illegal address, a kernel's failed assert, an illegal instruction, a launch failure or timeout
    (cudaErrorIllegalAddress, cudaErrorAssert, cudaErrorLaunchFailure and the like). torch raises them as
    ``torch.AcceleratorError`` (a RuntimeError before torch 2.8) from whichever call saw them first, often a later
    one than the kernel at fault. Rather than keep a list of codes and messages, a tiny round trip asks the device
    itself: it fails after such an error, and runs after the others (an unsupported cuDNN configuration, a bad
    argument), on which the worker serves on."""
    try:
        torch.ones(1, device=device).add_(1).item()  # .item() waits for the device's queued work
    except RuntimeError as error:
        return is_out_of_memory(error)
    return True


def _return_cached_memory(device: torch.device) -> None:
    """Give torch's cached device blocks and unused pinned host blocks back to the driver."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        # Public since torch 2.12; the GPU benchmark host's torch 2.11 has only the binding it wraps.
        getattr(torch.accelerator, "empty_host_cache", torch._C._host_emptyCache)()


def _placed(module: torch.nn.Module, device: torch.device, arithmetic: str) -> torch.nn.Module:
    """A copy of ``module`` on ``device`` in ``arithmetic``; the module itself where nothing changes."""
    if device.type == "cpu" and arithmetic == "f32":
        return module
    placed = copy.deepcopy(module).to(device=device, dtype=DTYPES[arithmetic])
    return placed.to(memory_format=torch.channels_last) if device.type == "cuda" else placed


def _f32_bytes(module: torch.nn.Module) -> int:
    """The bytes of ``module``'s parameters and buffers in an f32 copy (``_placed``: floats become f32)."""
    return sum(tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
               for tensor in itertools.chain(module.parameters(), module.buffers()))


def _nhwc_f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 2, 3, 1).to(torch.float32).contiguous()


def _tensors(result: Output) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else list(result)


def start(settings: Settings, device: str) -> None:
    """Threads for the CPU's share of the work (all of it on the CPU; the copies around a GPU's)."""
    torch.set_num_threads(settings.worker_cores)


def network(spec: ModelSpec, variant: Variant, settings: Settings, choice: Choice) -> Network:
    """A built-in model's network: its PyTorch module in the precision measured for it on this device."""
    module, statistics = variant.torch_form(settings, spec.name)
    arithmetic = precision.resolve_torch(settings.precision, choice.device, spec.cuda_precision)
    parameters = sum(parameter.numel() for parameter in module.parameters())
    return Network(spec.name, TorchRunner(module, choice.device, arithmetic, spec.name), spec.margin,
                   variant.scale, parameters, variant.border,
                   None if statistics is None else TorchRunner(statistics, choice.device, arithmetic, spec.name),
                   arithmetic)


def device_facts(device: str) -> dict[str, object]:
    """What /model/metadata says of the device: the GPU's name and memory, or the CPU."""
    runtime = f"PyTorch {torch.__version__}"
    if device != "cuda":
        return {"kind": "cpu", "name": cpu_name(), "runtime": runtime}
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"kind": "cuda", "name": properties.name, "memory_mib": properties.total_memory // MEBIBYTE,
            "runtime": f"{runtime}, CUDA {torch.version.cuda}"}


def usage(device: str) -> dict[str, float]:
    """The device's memory in use by this process, the seconds its networks held it and the calls it had no memory
    for, for /metrics."""
    memory = torch.cuda.memory_allocated() if device == "cuda" else 0
    lock = DEVICE_LOCKS[device]
    return {"memory_bytes": float(memory), "busy_seconds": lock.busy_s, "out_of_memory": float(lock.out_of_memory)}


def failure(device: str) -> str | None:
    """Why the device can run nothing more in this process (``DeviceFailed``'s message); None while it runs."""
    return DEVICE_LOCKS[device].failure


def memory_total(device: str) -> int | None:
    """The GPU's memory in bytes; None on the CPU, whose budget is MEMORY_BUDGET_MB."""
    if device != "cuda":
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
