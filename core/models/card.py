"""One card per model: what the service knows of a model before loading it, and the loader of its weights.

A built-in model's card comes from its spec (core/models/specs.py), a file's in MODELS_DIR from its
sidecar and name (core/models/operator_models.py); the registry offers, loads and describes every card
alike, and nothing downstream asks where a card came from.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.models.levels import Key

if TYPE_CHECKING:
    from config import Settings
    from core.backends import Choice
    from core.models.runtime import Network


@dataclass(frozen=True)
class LoadedModel:
    """A model's networks by (native scale, denoise level), each warmed up and checked, and what loading found
    out that its metadata shows over the card's words (a PyTorch file's architecture, precisions, runtime)."""

    networks: dict[Key, Network]
    found: dict[str, object] = field(default_factory=dict)
    # Memory per window input pixel as the card's ``window_bytes``, where loading measured it (an operator's
    # model): it replaces the card's from then on.
    window_bytes: Mapping[str, Mapping[str, int]] | None = None


Loader = Callable[["Choice", "Settings"], LoadedModel]


@dataclass(frozen=True)
class Described:
    """A model's words, shown by /model/metadata: a built-in spec states them, a card carries them."""

    name: str
    title: str
    use_when: str
    architecture: str
    weights: str
    licence: str

    def describe(self) -> dict[str, object]:
        """The words for /model/metadata."""
        return {"title": self.title, "use_when": self.use_when, "architecture": self.architecture,
                "weights": self.weights, "license": self.licence}

    @property
    def words(self) -> dict[str, str]:
        """The fields themselves, to make another ``Described`` from them."""
        return {name: getattr(self, name) for name in ("name", "title", "use_when", "architecture", "weights",
                                                         "licence")}


@dataclass(frozen=True)
class ModelCard(Described):
    # The networks known before loading (a PyTorch file that states no scale: none until it has loaded).
    keys: tuple[Key, ...]
    # Context pixels each tile needs; None: measured when the model loads (core/models/margin_probe.py).
    margin: int | None
    # Memory per window input pixel by device ("cpu": host memory, "cuda": GPU memory) and precision:
    # what the memory budget sizes the tiles by (core/memory.py). An operator's model's is replaced by the
    # figure measured when it loads (``LoadedModel.window_bytes``).
    window_bytes: Mapping[str, Mapping[str, int]]
    load: Loader = field(repr=False)
    # A required model must load for the server to be ready (MODELS); another fails alone (MODELS_DIR).
    required: bool = True
    # Host memory of a whole image's averages (Real-CUGAN's) per window input pixel on the CPU, by native scale and
    # precision: they run a part of the network on windows of their own, before the tiles, and each scale's network
    # is its own graph. None: sized as the tiles' windows.
    averages_bytes: Mapping[int, Mapping[str, int]] | None = None

    def window_bytes_per_pixel(self, precision: str, device: str) -> int:
        return self.window_bytes[device][precision]

    def averages_bytes_per_pixel(self, precision: str, device: str, scale: int) -> int:
        """What the windows a whole image's averages are measured in take per pixel, as the network of native
        ``scale`` runs them: on the CPU the figure measured for them where there is one; else (a GPU's) the tiles'
        windows' figure."""
        if device == "cuda" or self.averages_bytes is None:
            return self.window_bytes_per_pixel(precision, device)
        return self.averages_bytes[scale][precision]
