"""The operator's own models: each NAME.param + NAME.bin (ncnn) or NAME.onnx in MODELS_DIR, with NAME.json.

The sidecar NAME.json says what the file cannot: ``{"title": ..., "scale": 4, "license": ...,
"use_when": ... (optional), "margin": 16 (optional)}``. Without a margin, the smallest seam-free
one is measured when the model loads (``core.tiling.seam_free_margin``).

A problem with one model (no sidecar or a malformed one, a broken file, an ncnn layer the reader
does not know, a scale the file does not produce, an id taken by a built-in model) fails that
model alone, with a reason that names files but never their folder: the reason is shown over
HTTP, and the log holds the details.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ModelLoadError
from core.backends import KERAS_BACKENDS, Choice, Runner
from core.models.runtime import Network
from core.tiling import seam_free_margin

log = logging.getLogger(__name__)

# A model id goes into form fields, URLs and metric labels: plain characters only.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SUFFIXES = (".onnx", ".param", ".bin", ".json")
# Real photos (in the repository and the Docker image) for the scale check and the margin measurement:
# the two of the samples whose seams show most (fine grey texture, coffee grains).
PROBE_PHOTOS = tuple(Path(__file__).resolve().parents[2] / "assets" / "test_examples" / "low_resolution" / name
                     for name in ("camera.png", "coffee.png"))
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


@dataclass(frozen=True)
class OperatorModel:
    """One model found in MODELS_DIR: its id, its files and sidecar, or why it cannot be offered."""

    id: str
    stem: Path
    kind: Literal["ncnn", "onnx"] | None
    sidecar: Sidecar | None
    problem: str | None = None

    @property
    def files(self) -> str:
        """The model's file names, as shown in metadata and messages."""
        return f"{self.stem.name}.onnx" if self.kind == "onnx" else f"{self.stem.name}.{{param,bin}}"


class OperatorModelError(ModelLoadError):
    """Why an operator's model cannot be served, in words fit for an HTTP answer."""


def scan(folder: Path, reserved: Iterable[str]) -> dict[str, OperatorModel]:
    """Every model in ``folder`` by id, sorted by name; ``reserved`` are the built-in models' ids."""
    if not folder.is_dir():
        raise ValueError(f"MODELS_DIR {folder} is not a folder")
    stems: dict[str, set[str]] = {}
    for path in folder.iterdir():
        if path.is_file() and path.suffix in SUFFIXES and not path.name.startswith("."):
            stems.setdefault(path.stem, set()).add(path.suffix)
    reserved = frozenset(reserved)
    found = (_examine(folder / name, suffixes, reserved) for name, suffixes in sorted(stems.items()))
    return {model.id: model for model in found}


def _examine(stem: Path, suffixes: set[str], reserved: frozenset[str]) -> OperatorModel:
    name = stem.name
    kind: Literal["ncnn", "onnx"] | None = "onnx" if ".onnx" in suffixes else "ncnn" if ".param" in suffixes or ".bin" in suffixes else None
    problem = _files_problem(name, suffixes)
    sidecar = None
    if ".json" in suffixes:
        sidecar, sidecar_problem = _read_sidecar(stem.with_name(name + ".json"))
        problem = problem or sidecar_problem
    clash, unusable = name in reserved, not MODEL_ID.fullmatch(name)
    if clash:
        problem = f"{name} is the id of a built-in model; rename the files"
    elif unusable:
        problem = f"{name!r} cannot be a model id: use letters, digits, '-' and '_'"
    # A model that cannot have its own id is listed under a file name, which no model id can be.
    model_id = name + _main_suffix(kind, suffixes) if clash or unusable else name
    return OperatorModel(model_id, stem, kind, sidecar, problem)


def _main_suffix(kind: str | None, suffixes: set[str]) -> str:
    return {"onnx": ".onnx", "ncnn": ".param" if ".param" in suffixes else ".bin"}.get(kind or "", ".json")


def _files_problem(name: str, suffixes: set[str]) -> str | None:
    ncnn = {".param", ".bin"} & suffixes
    if ".onnx" in suffixes and ncnn:
        return f"both {name}.onnx and {name}{min(ncnn)} are there: keep one model per name"
    if len(ncnn) == 1:
        (present,) = ncnn
        return f"{name}{present} has no {name}{({'.param', '.bin'} - ncnn).pop()}"
    if ".onnx" not in suffixes and not ncnn:
        return f"{name}.json describes no model: {name}.onnx or {name}.param with {name}.bin is missing"
    if ".json" not in suffixes:
        return f"no sidecar {name}.json (title, scale and license are required)"
    return None


def _read_sidecar(path: Path) -> tuple[Sidecar | None, str | None]:
    try:
        fields = json.loads(path.read_bytes())
        if not isinstance(fields, dict):
            return None, f"{path.name} must hold one JSON object {{...}}, not a {type(fields).__name__}"
        return Sidecar.model_validate(fields), None
    except json.JSONDecodeError as error:
        return None, f"{path.name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    except UnicodeDecodeError:
        return None, f"{path.name} is not UTF-8 text"
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                             for item in error.errors(include_url=False))
        return None, f"{path.name}: {problems}"


def describe(model: OperatorModel) -> dict[str, object]:
    """The model's entry fields for /model/metadata, from its sidecar (or its file name without one)."""
    sidecar = model.sidecar
    return {
        "title": sidecar.title if sidecar else model.stem.name,
        "use_when": sidecar.use_when if sidecar else "",
        "architecture": {"onnx": "ONNX graph, run by OpenVINO", "ncnn": "ncnn graph"}.get(model.kind or "", "unknown"),
        "weights": f"MODELS_DIR: {model.files}",
        "license": sidecar.license if sidecar else "",
    }


def load(model: OperatorModel, choice: Choice, threads: int) -> Network:
    """The model built, its scale checked and its margin known; ``OperatorModelError`` says why not."""
    if model.problem is not None:
        raise OperatorModelError(model.problem)
    assert model.sidecar is not None  # no problem means the sidecar was read
    if choice.backend not in KERAS_BACKENDS:
        raise OperatorModelError(f"{model.files}: ncnn and ONNX models are served on the CPU path (OpenVINO: "
                                 f"make run or the CPU image); this worker runs {choice.backend}")
    run, parameters = _build(model, choice.backend, threads)
    network = Network(model.id, run, 0, model.sidecar.scale, parameters)
    photos = _probe_photos()
    _check_scale(network, model, photos[-1])
    margin = model.sidecar.margin
    if margin is None:
        margin = _measure_margin(network, model, photos)
    return dataclasses.replace(network, margin=margin)


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


def _probe_photos() -> list[np.ndarray]:
    def read(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255
    return [read(path) for path in PROBE_PHOTOS]


def _check_scale(network: Network, model: OperatorModel, photo: np.ndarray) -> None:
    """One run on a small input (the warm-up): the output must be the sidecar's scale times larger."""
    height, width = SCALE_PROBE
    try:
        out = network.predict(np.ascontiguousarray(photo[None, :height, :width]))
    except Exception as error:
        raise OperatorModelError(f"{model.files} failed on a {width}x{height} RGB input (details in the log)") from error
    scale = model.sidecar.scale
    if out.shape == (1, height * scale, width * scale, 3):
        return
    made = out.shape[1] // height
    if out.ndim == 4 and out.shape[1:] == (height * made, width * made, 3):
        raise OperatorModelError(f"{model.files} makes images {made}x larger, {model.stem.name}.json says scale {scale}")
    raise OperatorModelError(f"{model.files} turns a {width}x{height} RGB input into an array of shape "
                             f"{tuple(out.shape[1:])}, not a {scale}x larger RGB image")


def _measure_margin(network: Network, model: OperatorModel, photos: list[np.ndarray]) -> int:
    try:
        margin, decibels = seam_free_margin(network.predict, photos, network.scale)
    except ValueError as error:
        raise OperatorModelError(f"{error}: state a margin in {model.stem.name}.json to serve it anyway") from error
    log.info("model %s: margin %d px measured (tiled against whole image %.1f dB)", model.id, margin, decibels)
    return margin
