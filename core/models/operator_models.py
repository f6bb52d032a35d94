"""The operator's own models in MODELS_DIR, each offered as model NAME: ncnn (NAME.param + NAME.bin), ONNX
(NAME.onnx), or PyTorch (NAME.safetensors or NAME.pth, of any architecture in spandrel's main package).

The sidecar NAME.json says what a file cannot: ``{"title": ..., "scale": 4, "license": ...,
"use_when": ... (optional), "margin": 16 (optional)}``; ncnn and ONNX files need one. A PyTorch file
says its architecture, scale and channels itself (``core.models.torch_files`` reads it), so its
sidecar, and each key of it, is optional: without a title it is the architecture's name, without a
licence "unknown, stated by the operator", and a scale it states must be the file's. Without a
margin, the smallest seam-free one is measured when the model loads (``core.models.margin_probe``). Its
windows' memory is measured when it loads too (``core.models.window_memory``), and its tiles are sized by
that or by the hungriest built-in model's figure, whichever is the larger.

A .pth is a pickle: it is read only through spandrel's restricted unpickler, and not at all with
MODELS_DIR_PICKLES=false. PyTorch files need PyTorch (requirements-torch.txt): where it is not
installed they fail with that reason, and torch is imported only when such a file loads. On the
CPU path OpenVINO runs them converted, or PyTorch where the conversion does not hold; on the
PyTorch backend, PyTorch on the worker's device.

A problem with one model (no sidecar or a malformed one, a broken file, an ncnn layer the reader
does not know, a pickle that imports what a state dict does not hold, an architecture spandrel does
not know, a scale the file does not produce, an id taken by a built-in model, a file removed or replaced
since the folder was read) fails that model
alone, with a reason that names files but never their folder: the reason is shown over HTTP, and
the log holds the details. A file of a model format not served, and a link out of MODELS_DIR, are
listed as failed models too, so that no file the operator dropped in is passed over unsaid; a name
that is not printable is shown as ascii() writes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config import Settings
from core import backends
from core.errors import ModelLoadError
from core.backends import KERAS_BACKENDS, Choice, Runner
from core.models.card import LoadedModel, ModelCard
from core.models.levels import NO_DENOISE
from core.models.margin_probe import seam_free_margin
from core.models.runtime import Network
from core.models.window_memory import MEASUREMENT_SPREAD_PERCENT, bytes_per_window_pixel

log = logging.getLogger(__name__)

# A model id goes into form fields, URLs and metric labels: plain characters only, and in lower case, as a
# request's model is read (core.options: choices are matched in any case).
MODEL_ID = re.compile(r"[a-z0-9][a-z0-9_-]*")
Kind = Literal["ncnn", "onnx", "safetensors", "pth"]
# The kinds that are PyTorch files, which say their architecture and scale themselves.
TORCH_KINDS = ("safetensors", "pth")
SUFFIXES = (".onnx", ".param", ".bin", *(f".{kind}" for kind in TORCH_KINDS), ".json")
# Model files of formats not served: listed as failed with the reason, so that an operator's file is never
# passed over unsaid (a served suffix in capitals is listed too).
UNSERVED = {".pt": "a .pt is TorchScript, a program, which is refused: a state dict saved as .pt is read as NAME.pth",
            ".ckpt": "a training checkpoint: one that holds only tensors is read as NAME.pth"}
SERVED = ("served are NAME.safetensors and NAME.pth (PyTorch weights), NAME.onnx, and NAME.param with NAME.bin "
          "(ncnn), each with NAME.json beside it where needed")
ARCHITECTURES: dict[str, str] = {"onnx": "ONNX graph, run by OpenVINO", "ncnn": "ncnn graph",
                                 **dict.fromkeys(TORCH_KINDS, "PyTorch weights, architecture read when loaded")}
UNSTATED_LICENCE = "unknown, stated by the operator"
# Real photos (in the repository and the Docker image) for the scale check and the margin measurement:
# the two of the samples whose seams show most (fine grey texture, coffee grains).
PROBE_PHOTOS = tuple(Path(__file__).resolve().parents[2] / "assets" / "test_examples" / "low_resolution" / name
                     for name in ("camera.png", "coffee.png"))
# A sidecar holds a few short keys: 64 KiB is far more than one needs, and the most the scan reads of one, so
# that a huge file, or a link to an endless one, cannot hold up or swell the start.
SIDECAR_MAX_BYTES = 64 * 1024
# The most of a sidecar's unknown key a message shows: the key is the operator's, of any length.
SHOWN_KEY_CHARS = 40
# The scale check's input: small, and not square, so that swapped axes show.
SCALE_PROBE = (24, 32)  # height, width


class Sidecar(BaseModel):
    """NAME.json, read strictly: a misspelt key or a number in quotes is refused, not guessed at."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    title: str = Field(min_length=1)
    scale: int = Field(ge=2, le=8, description="How many times larger the file's output is than its input.")
    license: str = Field(min_length=1, description="The weights' licence, as the operator states it.")
    use_when: str = ""
    margin: int | None = Field(None, ge=0, le=256, description="Context pixels each tile needs; measured when absent.")


class TorchSidecar(Sidecar):
    """NAME.json beside a PyTorch file: every key optional, as the file says its architecture and scale itself."""

    title: str | None = Field(None, min_length=1)
    scale: int | None = Field(None, ge=2, le=8, description="The file's scale, checked against it when stated.")
    license: str | None = Field(None, min_length=1, description="The weights' licence, as the operator states it.")


@dataclass(frozen=True)
class OperatorModel:
    """One model found in MODELS_DIR: its id, its files and sidecar, or why it cannot be offered."""

    id: str
    stem: Path
    files: str  # the model's file names, as metadata and messages show them
    kind: Kind | None
    sidecar: Sidecar | None
    problem: str | None = None


@dataclass(frozen=True)
class Loaded:
    """A model loaded: its network, what loading found out that its metadata shows (for a PyTorch file the
    architecture read from it, the precisions it runs in, and what runs it), and its peak memory per window
    input pixel measured on the device it runs on."""

    network: Network
    found: dict[str, object]
    window_bytes_per_pixel: int


class OperatorModelError(ModelLoadError):
    """Why an operator's model cannot be served, in words fit for an HTTP answer."""


def scan(folder: Path, reserved: Iterable[str], pickles: bool = True) -> dict[str, OperatorModel]:
    """Every model in ``folder`` by id, sorted by id; ``reserved`` are the built-in models' ids, and
    ``pickles`` whether .pth files may be read (MODELS_DIR_PICKLES). Hidden files are passed over, and
    files of no model format (a README) are logged and passed over."""
    if not folder.is_dir():
        raise ValueError(f"MODELS_DIR {folder} is not a folder")
    root = folder.resolve()
    stems: dict[str, dict[str, str | None]] = {}  # each name's files by suffix, with why each cannot be read
    found: list[OperatorModel] = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix in SUFFIXES:
            stems.setdefault(path.stem, {})[path.suffix] = _entry_problem(path, root)
        elif path.suffix.lower() in (*SUFFIXES, *UNSERVED):
            found.append(_unserved(path))
        else:
            log.info("MODELS_DIR: %s is no model file, passed over", shown(path.name))
    reserved = frozenset(reserved)
    found += (_examine(folder / name, files, reserved, pickles) for name, files in stems.items())
    return {model.id: model for model in sorted(found, key=lambda model: model.id)}


def shown(name: str) -> str:
    """A name from MODELS_DIR (a file's, a sidecar's key) as logs and HTTP answers show it: as it is where it is
    printable, else as Python's ascii() writes it, so that a newline or a control character cannot forge a log
    line or hide in /ready."""
    return name if name.isprintable() else ascii(name)


def _entry_problem(path: Path, root: Path) -> str | None:
    """Why an entry of MODELS_DIR cannot be a model's file, told before it is opened: a link to nothing or out of
    MODELS_DIR (which would have any file the process can read taken for a model or a sidecar), or no regular
    file (a folder; a FIFO, whose reading would hold up the start)."""
    name = shown(path.name)
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return f"{name} is a symbolic link to nothing"
    except (OSError, RuntimeError):  # a loop of links is a RuntimeError up to Python 3.12
        return f"{name} is a symbolic link that cannot be followed"
    if not target.is_relative_to(root):
        return f"{name} is a link to a file outside MODELS_DIR: only files within it are read"
    if not target.is_file():
        return f"{name} is {'a folder' if target.is_dir() else 'not a regular file'}, not a model file"
    return None


def _unserved(path: Path) -> OperatorModel:
    """A file of a model format not served, listed under its file name (which no model id can be) as failed."""
    name = shown(path.name)
    suffix = path.suffix.lower()
    why = UNSERVED.get(suffix, f"suffixes are read in lower case: name it {shown(path.stem + suffix)}")
    return OperatorModel(name, path, name, None, None, f"{name} is not served ({why}); {SERVED}")


def _examine(stem: Path, files: dict[str, str | None], reserved: frozenset[str], pickles: bool) -> OperatorModel:
    name = stem.name
    suffixes = set(files)
    kind = _kind(suffixes)
    problem = (next((why for _, why in sorted(files.items()) if why), None)
               or _files_problem(name, suffixes) or _torch_problem(name, kind, pickles))
    sidecar = None
    if ".json" in suffixes and files[".json"] is None:
        schema = TorchSidecar if kind in TORCH_KINDS else Sidecar
        sidecar, sidecar_problem = _read_sidecar(stem.with_name(name + ".json"), schema)
        problem = problem or sidecar_problem
    clash, unusable = name in reserved, not MODEL_ID.fullmatch(name)
    if clash:
        problem = f"{name} is the id of a built-in model; rename the files"
    elif unusable:
        problem = (f"{ascii(name)} cannot be a model id: use lower-case letters, digits, '-' and '_' (a request's "
                   f"model is read in lower case)")
    # A model that cannot have its own id is listed under a file name, which no model id can be.
    model_id = shown(name + _main_suffix(kind, suffixes)) if clash or unusable else name
    return OperatorModel(model_id, stem, _files(name, kind), kind, sidecar, problem)


def _files(name: str, kind: Kind | None) -> str:
    """A model's file names, as metadata and messages show them."""
    return shown(f"{name}.{{param,bin}}" if kind == "ncnn" else f"{name}.{kind or 'json'}")


def _kind(suffixes: set[str]) -> Kind | None:
    """The model's format from its files' suffixes (where several are there, _files_problem refuses them)."""
    if ".onnx" in suffixes:
        return "onnx"
    if {".param", ".bin"} & suffixes:
        return "ncnn"
    return next((kind for kind in TORCH_KINDS if f".{kind}" in suffixes), None)


def _main_suffix(kind: str | None, suffixes: set[str]) -> str:
    if kind == "ncnn":
        return ".param" if ".param" in suffixes else ".bin"
    return f".{kind or 'json'}"


def _files_problem(name: str, suffixes: set[str]) -> str | None:
    ncnn = {".param", ".bin"} & suffixes
    formats = [suffix for suffix in (".onnx", min(ncnn, default=""), *(f".{kind}" for kind in TORCH_KINDS))
               if suffix in suffixes]
    if len(formats) > 1:
        return f"both {name}{formats[0]} and {name}{formats[1]} are there: keep one model per name"
    if len(ncnn) == 1:
        (present,) = ncnn
        return f"{name}{present} has no {name}{({'.param', '.bin'} - ncnn).pop()}"
    if not formats:
        return (f"{name}.json describes no model: {name}.onnx, {name}.safetensors, {name}.pth "
                f"or {name}.param with {name}.bin is missing")
    if ".json" not in suffixes and formats[0][1:] not in TORCH_KINDS:
        return f"no sidecar {name}.json (title, scale and license are required)"
    return None


def _torch_problem(name: str, kind: Kind | None, pickles: bool) -> str | None:
    """Why a PyTorch file cannot be read here, told before torch is imported."""
    if kind not in TORCH_KINDS:
        return None
    if kind == "pth" and not pickles:
        return (f"{name}.pth is a pickle, and MODELS_DIR_PICKLES=false refuses pickles: use the model as "
                f"{name}.safetensors, or set MODELS_DIR_PICKLES=true to read it through spandrel's restricted unpickler")
    if not backends.torch_installed():
        return (f"{name}.{kind} is a PyTorch model, and PyTorch is not installed here: serve it with make "
                f"run-gpu or the GPU image (Dockerfile.gpu; PyTorch, on a GPU or the CPU), or install PyTorch beside "
                f"OpenVINO as make test does (pip install -r requirements-torch.txt, then pip uninstall triton, "
                f"which crashes beside TensorFlow) to run it converted by OpenVINO")
    return None


def _read_sidecar(path: Path, schema: type[Sidecar]) -> tuple[Sidecar | None, str | None]:
    try:
        with path.open("rb") as file:
            text = file.read(SIDECAR_MAX_BYTES + 1)
    except OSError as error:
        log.warning("MODELS_DIR: %s cannot be read", path.name, exc_info=True)
        return None, f"{path.name} cannot be read ({error.strerror or type(error).__name__})"
    if len(text) > SIDECAR_MAX_BYTES:
        return None, f"{path.name} is larger than {SIDECAR_MAX_BYTES // 1024} KiB, the most a sidecar may hold"
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            return None, f"{path.name} must hold one JSON object {{...}}, not a {type(fields).__name__}"
        return schema.model_validate(fields), None
    except json.JSONDecodeError as error:
        return None, f"{path.name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    except UnicodeDecodeError:
        return None, f"{path.name} is not UTF-8 text"
    except RecursionError:
        return None, f"{path.name} nests arrays or objects too deeply to be read"
    except ValidationError as error:
        return None, f"{path.name}: {_validation_problems(error)}"
    except ValueError as error:
        # Python's own limit on the digits of an integer it reads (4300): a number no sidecar key takes.
        return None, f"{path.name} is not JSON this service reads: {error}"


def _validation_problems(error: ValidationError) -> str:
    """pydantic's findings, each after its key; an unknown key is the operator's, shown printable and cut short."""
    return "; ".join(f"{'.'.join(shown(str(part)[:SHOWN_KEY_CHARS]) for part in item['loc'])}: {item['msg']}"
                     for item in error.errors(include_url=False))


def describe(model: OperatorModel, found: dict[str, object] | None = None) -> dict[str, object]:
    """The model's entry fields for /model/metadata, from its sidecar (or its file name without one), and
    ``found``, what loading it found out (``Loaded.found``), over them."""
    sidecar = model.sidecar
    unstated = UNSTATED_LICENCE if model.kind in TORCH_KINDS else ""
    return {
        "title": sidecar.title if sidecar and sidecar.title else shown(model.stem.name),
        "use_when": sidecar.use_when if sidecar else "",
        "architecture": ARCHITECTURES.get(model.kind or "", "unknown"),
        "weights": f"MODELS_DIR: {model.files}",
        "license": sidecar.license if sidecar and sidecar.license else unstated,
        **(found or {}),
    }


def card(model: OperatorModel, window_bytes: Mapping[str, Mapping[str, int]]) -> ModelCard:
    """The model's card: its sidecar's words (or its file name's), its scale and margin where stated, and its
    loader; ``window_bytes`` is what an unmeasured model's windows are sized by, and the least they are sized by
    once the model has loaded and its windows were measured."""
    about = describe(model)
    scale = model.sidecar.scale if model.sidecar else None
    return ModelCard(model.id, about["title"], about["use_when"], about["architecture"], about["weights"],
                     about["license"], keys=((scale, NO_DENOISE),) if scale else (),
                     margin=model.sidecar.margin if model.sidecar else None, window_bytes=window_bytes,
                     load=lambda choice, settings: _loaded_model(model, window_bytes, choice, settings),
                     required=False)


def _loaded_model(model: OperatorModel, unmeasured: Mapping[str, Mapping[str, int]], choice: Choice,
                  settings: Settings) -> LoadedModel:
    loaded = load(model, choice, settings.worker_cores, settings.precision)
    network = loaded.network
    sized = sized_window_bytes(loaded.window_bytes_per_pixel, unmeasured[choice.device][network.precision])
    log.info("model %s: windows take %d B per input pixel (%s memory, %s): %d measured at load (counted as %d %%), "
             "%d the least", model.id, sized, choice.device, network.precision, loaded.window_bytes_per_pixel,
             MEASUREMENT_SPREAD_PERCENT, unmeasured[choice.device][network.precision])
    window_bytes = {**unmeasured, choice.device: {**unmeasured[choice.device], network.precision: sized}}
    return LoadedModel({(network.scale, NO_DENOISE): network}, {**loaded.found, "window_bytes_per_pixel": sized},
                       window_bytes)


def sized_window_bytes(measured: int, unmeasured: int) -> int:
    """What the model's tiles are sized by: the measurement with its spread between processes added, never less
    than the hungriest built-in model's figure. The floor keeps a light model's tiles as they were, and covers
    what two small probe windows may miss (the built-in figures were measured up to 384-px windows, and some
    backends' buffers grow faster than the window)."""
    return max(-(-measured * MEASUREMENT_SPREAD_PERCENT // 100), unmeasured)


def load(model: OperatorModel, choice: Choice, threads: int, precision: str = "auto") -> Loaded:
    """The model built, its scale checked, its margin known and its window memory measured on ``choice``'s device;
    ``OperatorModelError`` says why not. ``precision`` is PRECISION, which a PyTorch file on the pytorch backend
    follows."""
    problem = model.problem or _changed_since_scan(model)
    if problem is not None:
        raise OperatorModelError(problem)
    photos = _probe_photos()
    network, found = LOADERS[model.kind](model, choice, threads, precision, photos)
    _check_scale(network, model, photos[-1])
    _check_finite(network, model, photos[-1])
    margin = model.sidecar.margin if model.sidecar else None
    if margin is None:
        margin = _measure_margin(network, model, photos)
    return Loaded(dataclasses.replace(network, margin=margin), found, bytes_per_window_pixel(network, choice.device))


def _changed_since_scan(model: OperatorModel) -> str | None:
    """Why the model's files can no longer be read as ``scan`` found them: the operator may remove or replace a file
    while the models before it load, and a FIFO put in its place would hold up the load for good."""
    root = model.stem.parent.resolve()
    suffixes = (".param", ".bin") if model.kind == "ncnn" else (f".{model.kind}",)
    for path in (model.stem.with_name(model.stem.name + suffix) for suffix in suffixes):
        if not (path.exists() or path.is_symlink()):
            return f"{shown(path.name)} was removed from MODELS_DIR after it was read"
        problem = _entry_problem(path, root)
        if problem is not None:
            return f"{problem} (it changed after MODELS_DIR was read)"
    return None


def _graph_network(model: OperatorModel, choice: Choice, threads: int, setting: str,
                   photos: list[np.ndarray]) -> tuple[Network, dict[str, object]]:
    """An ncnn or ONNX model's network, at its sidecar's scale, on the CPU path."""
    assert model.sidecar is not None  # no problem means the sidecar was read
    if choice.backend not in KERAS_BACKENDS:
        raise OperatorModelError(f"{model.files}: ncnn and ONNX models are served on the CPU path (OpenVINO: "
                                 f"make run or the CPU image); this worker runs {choice.backend}")
    run, parameters = _build(model, choice.backend, threads)
    return Network(model.id, run, 0, model.sidecar.scale, parameters), {}


def _torch_network(model: OperatorModel, choice: Choice, threads: int, setting: str,
                   photos: list[np.ndarray]) -> tuple[Network, dict[str, object]]:
    """A PyTorch file's network: OpenVINO's conversion on a Keras backend, else PyTorch on the worker's device."""
    from core.models import torch_files

    try:
        weights = torch_files.read(model.stem.with_name(f"{model.stem.name}.{model.kind}"))
    except torch_files.TorchFileError as error:
        raise OperatorModelError(str(error)) from error
    stated = model.sidecar.scale if model.sidecar else None
    if stated is not None and stated != weights.scale:
        raise OperatorModelError(f"{model.stem.name}.json says scale {stated}, {model.files} holds a "
                                 f"{weights.scale}x {weights.architecture} model")
    try:
        built = (torch_files.on_openvino(weights, threads, photos) if choice.backend in KERAS_BACKENDS
                 else torch_files.on_pytorch(weights, choice.device, setting, photos))
    except torch_files.TorchFileError as error:
        raise OperatorModelError(str(error)) from error
    except Exception as error:
        raise OperatorModelError(f"{model.files}: the {weights.architecture} model failed to run "
                                 f"(details in the log)") from error
    log.info("model %s: %s %dx (%s) read from %s, run by %s in %s", model.id, weights.architecture,
             weights.scale, ", ".join(weights.tags), model.files, built.runtime, built.precision)
    found: dict[str, object] = {
        "architecture": ", ".join([weights.architecture, *weights.tags]) + " (read from the file by spandrel)",
        "precisions": list(weights.precisions), "runtime": built.runtime}
    if not (model.sidecar and model.sidecar.title):
        found["title"] = weights.architecture
    network = Network(model.id, built.runner, 0, weights.scale, weights.parameters, weights.border,
                      precision=built.precision)
    return network, found


def _build(model: OperatorModel, backend: str, threads: int) -> tuple[Runner, int]:
    try:
        if model.kind == "onnx":
            from core.backends.openvino import OnnxRunner

            # OpenVINO runs it whatever BACKEND says: there is no Keras model for TensorFlow to run.
            runner = OnnxRunner(model.stem.with_name(model.stem.name + ".onnx"), threads)
            return runner, runner.parameters
        from core.backends.tensorflow import from_keras
        from core.models.ncnn_graph import build_from_ncnn

        network = from_keras(model.id, build_from_ncnn(model.stem), 0, backend, threads=threads)
        return network.run, network.parameters
    except UnicodeDecodeError as error:
        raise OperatorModelError(f"{model.stem.name}.param is not ncnn param text") from error
    except ValueError as error:
        # The readers' messages name files and layers; a folder must not reach an HTTP answer.
        message = str(error).replace(str(model.stem.parent), "MODELS_DIR")
        raise OperatorModelError(message if model.stem.name in message else f"{model.files}: {message}") from error
    except Exception as error:
        reader = "OpenVINO as an ONNX model" if model.kind == "onnx" else "the ncnn reader"
        raise OperatorModelError(f"{model.files} could not be read by {reader} (details in the log)") from error


# The loader of each kind of file: ncnn and ONNX graphs on the CPU path, PyTorch files on either.
LOADERS = {"ncnn": _graph_network, "onnx": _graph_network, "safetensors": _torch_network, "pth": _torch_network}


def _probe_photos() -> list[np.ndarray]:
    def read(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255
    return [read(path) for path in PROBE_PHOTOS]


def _check_scale(network: Network, model: OperatorModel, photo: np.ndarray) -> None:
    """One run on a small input (the warm-up): the output must be the stated scale times larger."""
    height, width = SCALE_PROBE
    try:
        out = network.predict(np.ascontiguousarray(photo[None, :height, :width]))
    except Exception as error:
        raise OperatorModelError(f"{model.files} failed on a {width}x{height} RGB input (details in the log)") from error
    scale = network.scale
    if out.shape == (1, height * scale, width * scale, 3):
        return
    made = out.shape[1] // height
    stated_by = "spandrel's reading of it" if model.kind in TORCH_KINDS else f"{model.stem.name}.json"
    if out.ndim == 4 and out.shape[1:] == (height * made, width * made, 3):
        raise OperatorModelError(f"{model.files} makes images {made}x larger, {stated_by} says scale {scale}")
    raise OperatorModelError(f"{model.files} turns a {width}x{height} RGB input into an array of shape "
                             f"{tuple(out.shape[1:])}, not a {scale}x larger RGB image")


def _check_finite(network: Network, model: OperatorModel, photo: np.ndarray) -> None:
    """The runner's own output on a small input must be finite: broken weights (NaN, infinity) give NaN, which
    would be served as level 0, or infinity, which ``Network.predict`` clips to 0 or 1 and so hides."""
    height, width = SCALE_PROBE
    out = network.run(np.ascontiguousarray(photo[None, :height, :width]))
    if not np.isfinite(out).all():
        raise OperatorModelError(f"{model.files} gives values that are not finite (NaN or infinity) for a "
                                 f"{width}x{height} photo: its weights are broken")


def _measure_margin(network: Network, model: OperatorModel, photos: list[np.ndarray]) -> int:
    try:
        margin, decibels = seam_free_margin(network.predict, photos, network.scale, alignment=network.alignment)
    except ValueError as error:
        raise OperatorModelError(f"{error}: state a margin in {model.stem.name}.json to serve it anyway") from error
    log.info("model %s: margin %d px measured (tiled against whole image %.1f dB)", model.id, margin, decibels)
    return margin
