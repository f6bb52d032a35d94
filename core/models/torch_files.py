"""The operator's PyTorch model files (NAME.safetensors, NAME.pth in MODELS_DIR): read by spandrel, run by
whichever backend the worker has.

- Reading: spandrel's main package (MIT; never spandrel-extra-arches, whose architectures carry
  non-commercial licences) detects the architecture, scale and channels from the state dict alone. A
  ``.pth`` is a pickle: it is read only through spandrel's restricted unpickler, which refuses any global
  but tensors' storages and dicts before it is imported, and never as a TorchScript archive; a
  ``.safetensors`` holds nothing but tensors. A file larger than MAX_FILE_BYTES is refused before it is read;
  one of more than MAX_TENSORS tensors, or that spends more than MAX_INDEX_BYTES describing them, as it is
  read; one that would make the worker hold far more than it stores (``read``), or more than MAX_PARAMETERS,
  before spandrel builds its model.
- The pytorch backend runs the module on the worker's device: on CUDA in fp16 or bf16 where spandrel says
  the architecture allows it and the output on the probe photos stays within
  ``precision.MIN_BF16_PSNR_DB`` of f32's, else in f32; on the CPU in f32.
- A Keras backend (the CPU path) runs the module converted once by OpenVINO for inputs of any size, so CPU
  speed stays. The conversion runs in a child process, as OpenVINO's converter crashes the process on some
  architectures (DAT), and its result is checked against PyTorch at two sizes other than the traced one. An
  architecture that converts only at the traced size (SwinIR), or not at all, runs through PyTorch on the CPU.
- spandrel's size requirements (a minimum side, a multiple of, square) are met by mirroring the input on
  the bottom and right; ``Network`` cuts the output back.

Messages of ``TorchFileError`` name the file, never its folder: they are shown over HTTP.
"""
from __future__ import annotations

import itertools
import json
import logging
import pickle
import re
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, SizeRequirements, canonicalize_state_dict
from spandrel.__helpers.unpickler import RestrictedUnpickler
from torch import nn
from torch.overrides import TorchFunctionMode

from core.backends import Runner
from core.backends.pytorch import DTYPES, TorchRunner
from core.metrics import psnr
from core.models import precision
from core.models.border import Border
from core.models.runtime import f32_copy_bytes, plan_rerun

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SCALES = range(2, 9)  # as a sidecar's scale: what the service serves
RGB = 3
# The side of the input OpenVINO traces the module with (raised to the architecture's requirements).
TRACED_SIDE = 32
# Sizes, as (height, width), at which the converted model must equal PyTorch: neither is the traced size,
# nor square, so a graph that kept the traced shape fails or differs.
CHECKED_SIZES = ((28, 44), (52, 36))
CONVERSION_TIMEOUT_S = 600
# The conversion's child process: this module run as a program (``convert`` below).
CONVERTER = (sys.executable, "-m", __name__)
# The 16-bit arithmetics on CUDA, in the order tried: fp16 is the faster on most GPUs.
CUDA_CANDIDATES = ("fp16", "bf16")
# The record that makes torch.load take a zip for a TorchScript archive, which it loads with torch.jit.load.
TORCHSCRIPT_RECORD = "constants.pkl"
UNPICKLER_REFUSAL = re.compile(r"Global '(.{1,120})' is forbidden")
# The most parameters a model file may hold, so that a file cannot have the worker build more than its memory
# budget allows: HAT-L, among the largest super-resolution models, has about 40 M; 200 M (800 MB in f32) leaves
# room for larger ones.
MAX_PARAMETERS = 200_000_000
# The largest model file read: MAX_PARAMETERS f32 parameters twice over, as BasicSR's files hold the weights as
# params and params_ema. torch.load reads a .pth whole into memory before its parameters can be counted.
MAX_FILE_BYTES = 2 * 4 * MAX_PARAMETERS
# The most memory a model's module may hold once built, its parameters and its buffers together: MAX_PARAMETERS in
# f32. Buffers need not be in the file: GRL makes its attention masks and indices as it is built, sized by the
# window its tables' shapes name (a 1 MB file asks for 1.0 GB of them).
MAX_MODULE_BYTES = 4 * MAX_PARAMETERS
# The most tensors a model file may hold, counted before they are made: each costs about 1.4 KB of memory however
# few values it holds (1.7 M empty tensors, a 99 MB .safetensors, took 2.3 GB). HAT-L has 1,710; BasicSR's files
# hold them twice over.
MAX_TENSORS = 20_000
# The most bytes a file may spend describing its tensors (a .safetensors' JSON header, each pickle of a .pth), read
# before any tensor is made: HAT-L's pickle takes 227 bytes a tensor, and a pickle's objects take up to about 20
# times its bytes in memory.
MAX_INDEX_BYTES = 4 * 1024 * 1024
# A .safetensors file opens with its header's length, a little-endian 64-bit number.
SAFETENSORS_LENGTH = struct.Struct("<Q")
# load_state_dict's own words where a state dict does not fit the module built for it (missing, unexpected or
# misshapen tensors): on the meta device as in memory.
MISFIT = "Error(s) in loading state_dict"
# The most of a key from the file a message shows: the key is the file's, of any length.
SHOWN_KEY_CHARS = 60


class TorchFileError(ValueError):
    """Why a PyTorch model file cannot be served, in words fit for an HTTP answer."""


class Call(nn.Module):
    """The architecture's module called as spandrel calls it: some give a tuple and are served its first item.

    spandrel keeps that call in its descriptor (``_call_fn``), reachable otherwise only through the
    descriptor's ``__call__``, which also pads and clamps in place: done here by the service itself.
    """

    def __init__(self, descriptor: ImageModelDescriptor) -> None:
        super().__init__()
        self.model = descriptor.model
        self._call = descriptor._call_fn

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Some architectures scale their input in place (RCAN: x *= rgb_range); on the CPU that input shares
        # its memory with the caller's numpy array, which must stay as it was.
        return self._call(self.model, image.clone())


@dataclass(frozen=True)
class TorchWeights:
    """A model file as spandrel read it: its architecture, what it promises, and the module with its weights."""

    path: Path
    architecture: str
    tags: tuple[str, ...]
    scale: int
    precisions: tuple[str, ...]  # f32 and the 16-bit floats spandrel says the architecture runs in
    requirements: SizeRequirements
    module: nn.Module

    @property
    def parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.module.parameters())

    @property
    def border(self) -> Border | None:
        """Mirrored padding up to the architecture's multiple, which tiles then start at, as the whole image's
        windows do (a network that downsamples that often computes the same there)."""
        multiple = self.requirements.multiple_of
        return Border(0, multiple) if multiple > 1 else None


@dataclass(frozen=True)
class Built:
    """The model made runnable: its runner (NHWC float32), the arithmetic, and what runs it, in words."""

    runner: Runner
    precision: str
    runtime: str


class SizeFit:
    """A runner whose inputs are mirrored on the bottom and right up to the size the architecture requires.

    The extra rows and columns of the output stay: ``Network`` cuts every output to the input's size.
    """

    def __init__(self, runner: Runner, requirements: SizeRequirements) -> None:
        self.runner, self.requirements = runner, requirements

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(fit(batch, self.requirements))

    def release_memory(self) -> None:
        self.runner.release_memory()

    @property
    def f32_copy_bytes(self) -> int:
        return f32_copy_bytes(self.runner)

    def plan_rerun(self, room: int, f32_bytes_per_window_pixel: int) -> None:
        plan_rerun(self.runner, room, f32_bytes_per_window_pixel)


def fit(batch: np.ndarray, requirements: SizeRequirements) -> np.ndarray:
    """(N, H, W, C) mirrored on the bottom and right to the smallest size that meets ``requirements``."""
    right, bottom = requirements.get_padding(batch.shape[2], batch.shape[1])
    if not (right or bottom):
        return batch
    # numpy mirrors again and again where the padding is wider than the input (a tile narrower than a minimum).
    return np.pad(batch, ((0, 0), (0, bottom), (0, right), (0, 0)), mode="reflect")


# --- reading --------------------------------------------------------------------------------------------

def read(path: Path) -> TorchWeights:
    """``path`` read by spandrel and checked to be an RGB super-resolution model; ``TorchFileError`` says why not.

    A file may not make the worker hold far more than it stores: a zip .pth with compressed entries, a tensor
    viewing more values than the file stores, a layer numbered past the tensors there are, more than
    MAX_PARAMETERS parameters, tensors that do not fit the architecture they look like, an architecture that
    cannot be checked so, and a module that would hold more than MAX_MODULE_BYTES are refused before the
    architecture is built in memory."""
    state = _state_dict(path)
    if not isinstance(state, dict) or not state:
        raise TorchFileError(f"{path.name} holds no state dict")
    _check_size(state, path.name)
    descriptor = _descriptor(state, path.name)
    _check_serves(descriptor, path.name)
    precisions = ("f32", *(["fp16"] if descriptor.supports_half else []),
                  *(["bf16"] if descriptor.supports_bfloat16 else []))
    module = Call(descriptor).float().eval().requires_grad_(False)
    return TorchWeights(path, descriptor.architecture.name, tuple(descriptor.tags), descriptor.scale, precisions,
                        descriptor.size_requirements, module)


def _state_dict(path: Path) -> dict:
    # Opened once: every check and the reading itself see one file, whatever the name holds by then (the operator
    # may replace it while it loads).
    with _opened(path) as file:
        _check_file_size(file, path.name)
        if path.suffix == ".pth":
            _check_archive(file, path.name)
        else:
            _check_header(file, path.name)
        file.seek(0)
        return _loaded(file, path)


def _opened(path: Path) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file: not blocking, as a FIFO put in its place
    would hold up the load for good."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise TorchFileError(f"{path.name} cannot be read ({error.strerror or type(error).__name__})") from error
    file = os.fdopen(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        file.close()
        raise TorchFileError(f"{path.name} is not a regular file, not a model file")
    return file


def _loaded(file: BinaryIO, path: Path) -> dict:
    try:
        if path.suffix == ".pth":
            return canonicalize_state_dict(torch.load(file, map_location="cpu", pickle_module=BOUNDED_UNPICKLE,
                                                      weights_only=False))
        # safetensors reads by name only: the name of the file held open (Linux, as the images are).
        return canonicalize_state_dict(load_safetensors(f"/proc/self/fd/{file.fileno()}", device="cpu"))
    except IndexTooLarge as error:
        raise TorchFileError(f"{path.name} {error}") from error
    except pickle.UnpicklingError as error:
        refused = UNPICKLER_REFUSAL.search(str(error))
        if refused is None:
            raise TorchFileError(f"{path.name} is not a PyTorch model file (details in the log)") from error
        raise TorchFileError(f"{path.name} asks to import {refused.group(1)}, which is no part of a state dict: "
                             f"refused by spandrel's restricted unpickler, nothing was run") from error
    except Exception as error:
        # A truncated zip, a file of another kind, a header safetensors cannot read: the log has the library's words.
        raise TorchFileError(f"{path.name} is not a PyTorch model file, or it is damaged "
                             f"(details in the log)") from error


def _check_file_size(file: BinaryIO, name: str) -> None:
    """A file larger than MAX_FILE_BYTES is refused before it is read: its size on disk may be far smaller (a sparse
    file), and a .pth is read whole into memory, which would take the worker past its memory budget."""
    size = os.fstat(file.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise TorchFileError(f"{name} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} a model file may be "
                             f"({MAX_PARAMETERS:,} parameters in f32, twice over)")


def _check_archive(file: BinaryIO, name: str) -> None:
    """A zip .pth must be what torch.save writes. Not a TorchScript archive: torch.load hands one to
    torch.jit.load, past any unpickler, and that compiles the archive's code and runs its ``__setstate__``
    methods as it loads (a loop that never ends, a tensor of terabytes). And its entries stored: torch.load
    inflates a compressed one in memory, unchecked (150 KB of deflated zeros make 155 MB). A .pth of PyTorch
    before 1.6 is no zip, and is read as it is."""
    try:
        if not zipfile.is_zipfile(file):
            return
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except Exception as error:
        # A zip directory that zipfile cannot read: the log has its words.
        raise TorchFileError(f"{name} is not a PyTorch model file, or it is damaged "
                             f"(details in the log)") from error
    # torch.load's own test of a TorchScript archive, on the names below the archive's top folder.
    if any(entry.filename.partition("/")[2] == TORCHSCRIPT_RECORD for entry in entries):
        raise TorchFileError(f"{name} is a TorchScript archive, a program, which is refused before it is "
                             f"read: only a state dict saved by torch.save is read as NAME.pth")
    compressed = [entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise TorchFileError(f"{name} holds {len(compressed)} compressed zip entries "
                             f"({_shown_key(compressed[0])} ...), which torch.save never writes: only stored "
                             f"entries are read, as torch.load would inflate the others in memory unchecked")


def _check_header(file: BinaryIO, name: str) -> None:
    """A .safetensors' header may not make the worker hold far more than the file stores: its length is read
    first, and its tensors counted, before safetensors makes them. A header that cannot be read so (longer than
    the file: a file of another kind) is left to safetensors, which refuses it with its own words."""
    prefix = file.read(SAFETENSORS_LENGTH.size)
    if len(prefix) < SAFETENSORS_LENGTH.size:
        return
    (length,) = SAFETENSORS_LENGTH.unpack(prefix)
    if length > os.fstat(file.fileno()).st_size - SAFETENSORS_LENGTH.size:
        return
    if length > MAX_INDEX_BYTES:
        raise TorchFileError(f"{name} {_index_too_large(f'a header of {length:,} bytes')}")
    text = file.read(length)
    try:
        header = json.loads(text)
    except ValueError:
        return
    if isinstance(header, dict) and len(header.keys() - {"__metadata__"}) > MAX_TENSORS:
        raise TorchFileError(f"{name} {_too_many_tensors()}")


def _index_too_large(what: str) -> str:
    return f"has {what}: {MAX_INDEX_BYTES:,} bytes are the most a model file may spend describing its tensors"


def _too_many_tensors() -> str:
    return f"holds more than {MAX_TENSORS:,} tensors, the most a model file may hold (HAT-L has 1,710)"


class IndexTooLarge(pickle.UnpicklingError):
    """A pickle past MAX_INDEX_BYTES or MAX_TENSORS, in words completing "NAME.pth ..."."""


class _Budget:
    """A file as an unpickler reads it: through at most ``left`` bytes. It has no ``peek``, so that the unpickler
    reads only what it takes and leaves the file where the pickle ends: there a .pth of PyTorch before 1.6
    holds its storages, which torch reads next."""

    def __init__(self, file: object, left: int) -> None:
        self.file, self.left = file, left

    def read(self, size: int = -1) -> bytes:
        return self._spent(self.file.read(self.left + 1 if size < 0 else min(size, self.left + 1)))

    def readline(self) -> bytes:
        return self._spent(self.file.readline(self.left + 1))

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _spent(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise IndexTooLarge(_index_too_large("a longer pickle"))
        return data


class BoundedUnpickler(RestrictedUnpickler):
    """spandrel's restricted unpickler, reading at most MAX_INDEX_BYTES and making at most MAX_TENSORS tensors."""

    def __init__(self, file: object, **kwargs: object) -> None:
        super().__init__(_Budget(file, MAX_INDEX_BYTES), **kwargs)
        self.tensors = 0

    def find_class(self, module: str, name: str) -> object:
        found = super().find_class(module, name)
        return self._counted if found is torch._utils._rebuild_tensor_v2 else found

    def _counted(self, *args: object) -> torch.Tensor:
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise IndexTooLarge(_too_many_tensors())
        return torch._utils._rebuild_tensor_v2(*args)


# torch.load's pickle_module: it takes the unpickler class, and load() for the small pickles of an old .pth.
BOUNDED_UNPICKLE = SimpleNamespace(Unpickler=BoundedUnpickler, __name__="pickle",
                                   load=lambda file, **kwargs: BoundedUnpickler(file, **kwargs).load())


def _check_size(state: dict, name: str) -> None:
    """Refuse a state dict that would take far more memory than its file once spandrel builds its model from it:
    a tensor viewing more values than its storage holds (strides of 0: a 3 KB file of gigabytes of
    parameters), a layer numbered past the count of tensors (spandrel builds every layer up to it before it
    finds that the tensors do not fit), or more than MAX_PARAMETERS parameters."""
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    for key, tensor in tensors.items():
        stored = tensor.untyped_storage().nbytes()
        if tensor.numel() * tensor.element_size() > stored:
            raise TorchFileError(f"{name}: tensor {_shown_key(key)} of shape {tuple(tensor.shape)} views "
                                 f"{tensor.numel():,} values in {stored:,} stored bytes: a tensor may hold no more "
                                 f"values than the file stores for it")
    for key in tensors:
        past = next((part for part in str(key).split(".") if _number_past(part, len(tensors))), None)
        if past is not None:
            raise TorchFileError(f"{name}: key {_shown_key(key)} numbers a layer {past[:12]}, past the "
                                 f"{len(tensors)} tensors of the file: a layer's number may not exceed the count of "
                                 f"tensors")
    parameters = sum(tensor.numel() for tensor in tensors.values())
    if parameters > MAX_PARAMETERS:
        raise TorchFileError(f"{name} holds {parameters:,} parameters, more than the {MAX_PARAMETERS:,} a model "
                             f"file may hold")


def _number_past(part: str, count: int) -> bool:
    """Whether a key's component is a number larger than ``count`` (compared as text first: it may be of any
    length, and Python refuses to convert one of more than 4300 digits)."""
    return part.isascii() and part.isdigit() and (len(part) > len(str(count)) or int(part) > count)


def _shown_key(key: object) -> str:
    return ascii(str(key)[:SHOWN_KEY_CHARS])


def _descriptor(state: dict, name: str) -> ImageModelDescriptor:
    """The model spandrel's main package detects in ``state``, loaded (as ``ArchRegistry.load`` does, but
    knowing the architecture, so that a state dict that does not fit it is named as such)."""
    for support in MAIN_REGISTRY.architectures("detection"):
        if _main_package(support.architecture) and _detects(support, state):
            _check_fits(support, state, name)
            try:
                return support.architecture.load(state)
            except Exception as error:
                raise _misfit(support, name) from error
    log.warning("%s: no architecture detected; its first keys: %s", name, sorted(state)[:8])
    raise TorchFileError(f"{name}: spandrel knows no architecture of these {len(state)} tensors "
                         f"(only spandrel's main package is served, not spandrel-extra-arches)")


def _check_fits(support: object, state: dict, name: str) -> None:
    """``state`` fits the architecture it looks like, checked by building the architecture on the meta device,
    which allocates nothing: spandrel sizes the layers it builds by the shapes of a few tensors, and finds that
    the others do not fit only once all are built (one 4096-wide convolution makes 151 M parameters of
    each). The few schedules that architectures read back as numbers while they are built are made in memory,
    and the constants they set from tensors made in memory are taken onto the meta device (``_MetaBuild``): so
    every architecture of spandrel's main package builds there. A file whose build fails there for another
    reason is refused, never built in memory: that build would be unchecked, and spandrel may size it by the
    file's key names and shapes (RCAN counts its blocks by the keys' numbers). The module built there is held to
    MAX_MODULE_BYTES."""
    try:
        with torch.device("meta"), _MetaBuild(), warnings.catch_warnings():
            # torch warns of each tensor that loading it into the meta device's module copies nothing: that is the aim.
            warnings.filterwarnings("ignore", "for .*: copying from a non-meta parameter", UserWarning)
            # A copy: some architectures rename or add keys of the state dict as they load it (SwinIR, SPAN), and
            # the build in memory must find it as the file gave it.
            module = support.architecture.load(dict(state)).model
    except Exception as error:
        if str(error).startswith(MISFIT):
            raise _misfit(support, name) from error
        log.warning("%s: %s cannot be built on the meta device", name, support.architecture.name, exc_info=True)
        raise TorchFileError(f"{name} looks like a {support.architecture.name} model, but it cannot be checked: its "
                             f"build on PyTorch's meta device, which checks a file before it takes any memory, failed "
                             f"({type(error).__name__}, details in the log), and it is not built in memory "
                             f"unchecked") from error
    _check_module_size(module, support, name)


def _check_module_size(module: nn.Module, support: object, name: str) -> None:
    """The module built on the meta device holds no more than MAX_MODULE_BYTES, its buffers counted: some are made
    as it is built, sized by the file's shapes but held nowhere in it (``_check_size`` counts the file's)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    held = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    if held > MAX_MODULE_BYTES:
        raise TorchFileError(f"{name} looks like a {support.architecture.name} model whose parameters and buffers "
                             f"would take {held:,} bytes once built, more than the {MAX_MODULE_BYTES:,} a model may "
                             f"take ({MAX_PARAMETERS:,} parameters in f32)")


class _MetaBuild(TorchFunctionMode):
    """What an architecture's build needs on the meta device. ``torch.linspace`` is made on the CPU: HAT, DAT,
    DRCT and SwinIR read their drop-path schedule (one number per block) back with ``.item()``, which a meta
    tensor cannot answer. An operation on meta tensors and tensors made on the CPU (``torch.Tensor(...)`` ignores
    the default device), which torch refuses, takes them all onto the meta device: RCAN and IPT set their
    mean-shift layers' constants so."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        if func is torch.linspace:
            kwargs = {**(kwargs or {}), "device": "cpu"}
        elif _mixes_devices(args):
            args = tuple(arg.to("meta") if isinstance(arg, torch.Tensor) else arg for arg in args)
        return func(*args, **(kwargs or {}))


def _mixes_devices(args: tuple) -> bool:
    meta = [arg.is_meta for arg in args if isinstance(arg, torch.Tensor)]
    return any(meta) and not all(meta)


def _misfit(support: object, name: str) -> TorchFileError:
    return TorchFileError(f"{name} looks like a {support.architecture.name} model, but its tensors do not fit that "
                          f"architecture (details in the log)")


def _main_package(architecture: object) -> bool:
    """Whether an architecture is spandrel's own: spandrel-extra-arches adds its own to the same registry."""
    return type(architecture).__module__.startswith("spandrel.")


def _detects(support: object, state: dict) -> bool:
    try:
        return bool(support.detect(state))
    except Exception:  # noqa: BLE001 - a detector that trips on foreign keys has not detected its architecture
        return False


def _check_serves(descriptor: object, name: str) -> None:
    """The service runs RGB images to a 2x to 8x larger RGB image: no inpainting, no 1x restoration, no grey."""
    if not isinstance(descriptor, ImageModelDescriptor):
        raise TorchFileError(f"{name} holds a {descriptor.architecture.name} {descriptor.purpose.lower()} model, "
                             f"which takes a mask beside the image: not super-resolution")
    architecture = descriptor.architecture.name
    if descriptor.scale not in SCALES:
        raise TorchFileError(f"{name} holds a {descriptor.scale}x {architecture} model ({descriptor.purpose}); "
                             f"the service serves 2x to 8x super-resolution")
    if (descriptor.input_channels, descriptor.output_channels) != (RGB, RGB):
        raise TorchFileError(f"{name} holds a {architecture} model of {descriptor.input_channels} input and "
                             f"{descriptor.output_channels} output channels; the service runs RGB (3 and 3)")


# --- running --------------------------------------------------------------------------------------------

def on_pytorch(weights: TorchWeights, device: str, setting: str, photos: list[np.ndarray]) -> Built:
    """The module on ``device`` in the arithmetic PRECISION (``setting``), the architecture and a measurement allow."""
    arithmetic = _torch_precision(weights, device, setting, photos)
    runner = TorchRunner(weights.module, device, arithmetic, weights.path.stem)
    return Built(SizeFit(runner, weights.requirements), arithmetic,
                 "PyTorch on CUDA" if device == "cuda" else "PyTorch on the CPU")


def _torch_precision(weights: TorchWeights, device: str, setting: str, photos: list[np.ndarray]) -> str:
    if setting == "auto":
        return measured_precision(weights, device, photos) if device == "cuda" else "f32"
    try:
        forced = precision.resolve_torch(setting, device, "f32")
    except ValueError as error:
        raise TorchFileError(str(error)) from error
    if forced == "f32" or forced in weights.precisions and _agreement_db(weights, device, forced, photos) > -np.inf:
        return forced
    log.warning("%s: PRECISION=%s, but %s does not run in it; running f32", weights.path.name, setting,
                weights.architecture)
    return "f32"


def measured_precision(weights: TorchWeights, device: str, photos: list[np.ndarray]) -> str:
    """The first 16-bit arithmetic the architecture runs in whose output on ``photos`` stays within
    ``precision.MIN_BF16_PSNR_DB`` of f32's on ``device`` (CUDA; the CPU for tests), else f32."""
    for arithmetic in (candidate for candidate in CUDA_CANDIDATES if candidate in weights.precisions):
        decibels = _agreement_db(weights, device, arithmetic, photos)
        log.info("%s: %s against f32 on the probe photos: %.1f dB", weights.path.name, arithmetic, decibels)
        if decibels >= precision.MIN_BF16_PSNR_DB:
            return arithmetic
    return "f32"


def _agreement_db(weights: TorchWeights, device: str, arithmetic: str, photos: list[np.ndarray]) -> float:
    """The worst PSNR of the module's output in ``arithmetic`` against f32's over ``photos``; -inf where it does not
    run in it, whatever spandrel says (SwinIR in bf16 fails at sizes other than the one it was trained at)."""
    try:
        reference = TorchRunner(weights.module, device, "f32").module
        placed = TorchRunner(weights.module, device, arithmetic).module
        return min(_psnr(_run_module(placed, photo, weights, arithmetic), _run_module(reference, photo, weights, "f32"))
                   for photo in photos)
    except Exception:  # noqa: BLE001 - any failure in that arithmetic only rules the arithmetic out
        log.warning("%s: %s does not run in %s", weights.path.name, weights.architecture, arithmetic, exc_info=True)
        return -np.inf


def _run_module(module: nn.Module, photo: np.ndarray, weights: TorchWeights, arithmetic: str) -> np.ndarray:
    """One photo through a placed module, with no f32 rerun: an overflow must show as a failed measurement."""
    parameter = next(module.parameters())
    batch = torch.from_numpy(fit(photo[None], weights.requirements)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        out = module(batch.to(parameter.device, DTYPES[arithmetic])).float()
    if not bool(torch.isfinite(out).all()):
        return np.full(out.shape, np.nan, np.float32)
    return out.permute(0, 2, 3, 1).cpu().numpy()[0]


def on_openvino(weights: TorchWeights, threads: int, photos: list[np.ndarray]) -> Built:
    """The module converted by OpenVINO for inputs of any size, or where that fails, PyTorch on the CPU."""
    if threads > 0:
        torch.set_num_threads(threads)  # the fallback's and the check's share of the cores
    reference = SizeFit(TorchRunner(weights.module, "cpu", "f32", weights.path.stem), weights.requirements)
    try:
        converted = SizeFit(_converted(weights, threads), weights.requirements)
        _check_conversion(converted, reference, photos[-1])
    except ConversionError as error:
        log.warning("%s: %s; PyTorch runs it on the CPU", weights.path.name, error)
        return Built(reference, "f32", f"PyTorch on the CPU: OpenVINO's conversion {error}")
    log.info("%s: converted by OpenVINO for inputs of any size, equal to PyTorch at %s",
             weights.path.name, " and ".join(f"{w}x{h}" for h, w in CHECKED_SIZES))
    return Built(converted, "f32", "OpenVINO, converted from PyTorch at load")


class ConversionError(Exception):
    """Why OpenVINO's form of a module is not served, completing "OpenVINO's conversion ..."."""


def _converted(weights: TorchWeights, threads: int) -> Runner:
    from core.backends.openvino import OnnxRunner

    with tempfile.TemporaryDirectory(prefix="sr-convert-") as folder:
        target = Path(folder) / "model.xml"
        try:
            done = subprocess.run([*CONVERTER, str(weights.path), str(target)], cwd=ROOT, capture_output=True,
                                  text=True, timeout=CONVERSION_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise ConversionError(f"took more than {CONVERSION_TIMEOUT_S} s") from error
        if done.returncode < 0:
            log.warning("%s: OpenVINO's converter died: %s", weights.path.name, done.stderr[-2000:])
            raise ConversionError(f"crashed ({signal.Signals(-done.returncode).name})")
        if done.returncode != 0:
            log.warning("%s: OpenVINO could not convert it: %s", weights.path.name, done.stderr[-2000:])
            raise ConversionError("failed (details in the log)")
        try:
            # OnnxRunner reads any format OpenVINO reads: the IR gets the same NHWC float32 pre- and
            # post-processing as an ONNX file, and is compiled with the worker's threads.
            return OnnxRunner(target, threads)
        except Exception as error:
            log.warning("%s: OpenVINO could not compile its conversion", weights.path.name, exc_info=True)
            raise ConversionError("gave a graph OpenVINO could not compile (details in the log)") from error


def _check_conversion(converted: Runner, reference: Runner, photo: np.ndarray) -> None:
    """The converted model equals PyTorch at sizes it was not traced at."""
    for height, width in CHECKED_SIZES:
        crop = np.ascontiguousarray(photo[None, :height, :width])
        expected = reference(crop)
        try:
            out = converted(crop)
        except Exception as error:
            raise ConversionError(f"works only at the size it was traced at (fails at {width}x{height})") from error
        decibels = _psnr(out, expected) if out.shape == expected.shape else -np.inf
        if decibels < precision.MIN_BF16_PSNR_DB:
            raise ConversionError(f"differs from PyTorch at {width}x{height} ({decibels:.1f} dB)")


def _psnr(out: np.ndarray, expected: np.ndarray) -> float:
    """PSNR of two outputs as 8-bit images would show them; -inf where either is not finite."""
    if not (np.isfinite(out).all() and np.isfinite(expected).all()):
        return -np.inf
    return psnr(*(np.rint(np.clip(image, 0.0, 1.0) * 255) for image in (out, expected)))


# --- the conversion's child process ---------------------------------------------------------------------

def convert(source: Path, target: Path) -> None:
    """OpenVINO's form of the model in ``source``, for any batch, height and width, saved as IR at ``target``."""
    import openvino as ov

    weights = read(source)
    side = TRACED_SIDE + max(weights.requirements.get_padding(TRACED_SIDE, TRACED_SIDE))
    example = torch.rand(1, RGB, side, side, generator=torch.Generator().manual_seed(0))
    model = ov.convert_model(weights.module, example_input=example, input=[ov.PartialShape([-1, RGB, -1, -1])])
    ov.save_model(model, target, compress_to_fp16=False)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
