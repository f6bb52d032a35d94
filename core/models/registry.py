"""The models this process serves: their cards, loading each once, and what /model/metadata says of them."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from config import Settings
from core import memory
from core.backends import Choice
from core.errors import ModelLoadError, NotReady, UnknownModel
from core.models import speed
from core.models.card import LoadedModel, ModelCard
from core.models.levels import NO_DENOISE, Key, all_levels, choose, describe_scales, levels_for
from core.models.specs import SPECS, UNMEASURED_WINDOW_BYTES, ModelSpec, Variant, window_bytes

if TYPE_CHECKING:
    from core.models.runtime import Network

log = logging.getLogger(__name__)

WARM_UP_SIDE = 32


class ModelRegistry:
    """The models this process serves, each loaded and run once before it is offered."""

    def __init__(self, settings: Settings, choice: Choice, only: str | None = None) -> None:
        """``only``: the one model offered (sr-upscale's local mode runs one), built-in or MODELS_DIR's."""
        unknown = [name for name in settings.model_names if name not in SPECS]
        if unknown:
            raise ValueError(f"MODELS names unknown models {unknown}; known: {sorted(SPECS)}")
        self.settings = settings
        self.choice = choice
        cards = {**{name: spec_card(SPECS[name]) for name in settings.model_names}, **models_dir_cards(settings)}
        self.cards = cards if only is None else {only: cards[only]}
        if settings.default_model not in self.names:
            raise ValueError(f"DEFAULT_MODEL {settings.default_model!r} is not among the models offered {self.names}")
        self._networks: dict[str, dict[Key, Network]] = {}
        self._states: dict[str, str] = {name: "pending" for name in self.names}
        self._load_seconds: dict[str, float] = {}
        self._failures: dict[str, str] = {}  # the whole reason, for the log's reader and the command line
        # What loading each model found out that its metadata shows (a PyTorch file's architecture).
        self._found: dict[str, dict[str, object]] = {}
        self._resident: int | None = None
        self._device_resident: int | None = None
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        """The models of MODELS, then those found in MODELS_DIR."""
        return tuple(self.cards)

    def load_all(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Build, load and warm up every configured model; a failure is recorded, not raised."""
        for name in self.names:
            self._set_state(name, "loading")
            started = time.perf_counter()
            try:
                networks = self._measured(self._load_named(name))
            except Exception as error:  # noqa: BLE001 - one broken model must not stop the others
                # The log keeps the paths and the library's words; /ready and /model/metadata say only this.
                log.exception("model %s failed to load", name)
                public = str(error) if isinstance(error, ModelLoadError) else \
                    f"{type(error).__name__}; the server log has the details"
                self._set_state(name, f"failed: {public}")
                self._failures[name] = str(error)
                continue
            seconds = time.perf_counter() - started
            with self._lock:
                self._networks[name] = networks
                self._states[name] = "ready"
                self._load_seconds[name] = seconds
            main = self._main(networks).throughput
            log.info("model %s ready in %.1f s", name, seconds,
                     extra={"per_call_s": main.per_call_s, "per_pixel_s": main.per_pixel_s})
            if on_loaded is not None:
                on_loaded(name, seconds)
        self._resident = memory.resident_estimate(memory.rss_bytes())
        self._device_resident = self._device_memory()
        log.info("models loaded: %d MiB resident", self._resident // memory.MEBIBYTE)

    def _measured(self, networks: dict[Key, Network]) -> dict[Key, Network]:
        """The networks with this machine's measured speed (core/cost.py), for refusing what cannot finish."""
        return {key: self._measure(network) for key, network in networks.items()}

    def _measure(self, network: Network) -> Network:
        throughput = speed.measure_network(network, speed.window_side(self.settings.tile_size, network.margin))
        network.release_memory()  # the measurement's buffers, before the next network's: the load's peak stays low
        return replace(network, throughput=throughput)

    def _load_named(self, name: str) -> dict[Key, Network]:
        loaded = self.cards[name].load(self.choice, self.settings)
        with self._lock:
            self._found[name] = loaded.found
            if loaded.window_bytes is not None:
                # Before the model is ready, so that no request's tiles are sized by the figure it replaces.
                self.cards[name] = replace(self.cards[name], window_bytes=loaded.window_bytes)
        return loaded.networks

    @property
    def device_resident(self) -> int:
        """Bytes the loaded models hold on a GPU (their weights, read once they are loaded, so that a window in
        flight does not shrink another request's tiles), for the GPU memory budget; 0 on the CPU."""
        return self._device_resident if self._device_resident is not None else self._device_memory()

    def _device_memory(self) -> int:
        return int(self.choice.module.usage(self.choice.device).get("memory_bytes", 0))

    @property
    def resident(self) -> int:
        """Resident bytes of the loaded models, for the memory budget; while they still load, what is resident now."""
        return self._resident if self._resident is not None else memory.resident_estimate(memory.rss_bytes())

    def _set_state(self, name: str, state: str) -> None:
        with self._lock:
            self._states[name] = state

    def get(self, name: str, scale: float = 4, denoise: str = NO_DENOISE) -> Network:
        """The ready network of model ``name`` for an enlargement and denoise level (see ``choose``).
        400 if not offered or the level is missing, 503 while loading."""
        if name not in self._states:
            raise UnknownModel(f"unknown model {name!r}; this server offers: {', '.join(self.names)}")
        with self._lock:
            networks = self._networks.get(name)
            state = self._states[name]
        if networks is None:
            raise NotReady(f"model {name!r} is not ready ({state})")
        return networks[choose(name, networks, scale, denoise)]

    def networks(self, name: str) -> tuple[Network, ...]:
        """Every network of model ``name`` once it is ready (each scale and denoise level); none before."""
        with self._lock:
            return tuple(self._networks.get(name, {}).values())

    def fail(self, name: str, reason: str) -> None:
        """Take a loaded model out of service, for a reason found once every model is loaded (core/service.py)."""
        with self._lock:
            self._networks.pop(name, None)
            self._states[name] = f"failed: {reason}"
            self._failures[name] = reason

    def failure(self, name: str) -> str | None:
        """Why model ``name`` failed to load, in full (its public state may say less)."""
        with self._lock:
            return self._failures.get(name)

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    @property
    def ready(self) -> bool:
        """Every model of MODELS ready, and every one of MODELS_DIR ready or failed (a broken file fails itself only)."""
        states = self.states()
        return all(states[name] == "ready" or (not card.required and states[name].startswith("failed"))
                   for name, card in self.cards.items())

    def describe(self) -> list[dict[str, object]]:
        """One entry per offered model, for /model/metadata."""
        states = self.states()
        with self._lock:
            networks = dict(self._networks)
        return [
            {
                "id": name,
                **self._about(name),
                "parameters": self._parameters(networks.get(name)),
                "precision": self._main(networks.get(name)).precision if networks.get(name) else None,
                "state": states[name],
                "default": name == self.settings.default_model,
            }
            for name in self.names
        ]

    def denoise_levels(self) -> dict[str, tuple[str, ...]]:
        """Each offered model's denoise levels at any of its scales (MODELS_DIR's too)."""
        return {name: all_levels(self.keys(name)) for name in self.names}

    def levels_for(self, name: str, scale: float) -> tuple[str, ...]:
        """Model ``name``'s denoise levels for an enlargement of ``scale`` (those of the network ``get`` chooses)."""
        return levels_for(self.keys(name), scale)

    def keys(self, name: str) -> tuple[Key, ...]:
        """The networks model ``name`` has once loaded, or its card says it will have until then."""
        with self._lock:
            networks = self._networks.get(name)
        return tuple(networks) if networks else self.cards[name].keys

    def _about(self, name: str) -> dict[str, object]:
        """What a model is, for its metadata entry: its card's words, and what loading it found out over them."""
        with self._lock:
            found = self._found.get(name, {})
        return {**self.cards[name].describe(), **found, **describe_scales(self.keys(name))}

    @staticmethod
    def _main(networks: dict[Key, Network]) -> Network:
        """The model's largest network without denoising: the one its metadata describes."""
        return networks[max(scale for scale, _ in networks), NO_DENOISE]

    def _parameters(self, networks: dict[Key, Network] | None) -> int | None:
        """The parameter count of the model's main network; None until loaded."""
        return self._main(networks).parameters if networks else None


def spec_card(spec: ModelSpec) -> ModelCard:
    """A built-in model's card, from its spec."""
    return ModelCard(**spec.words, keys=spec.keys, margin=spec.margin, window_bytes=window_bytes(spec),
                     load=lambda choice, settings: _load_spec(spec, choice, settings),
                     averages_bytes=spec.averages_bytes_per_pixel)


def _load_spec(spec: ModelSpec, choice: Choice, settings: Settings) -> LoadedModel:
    """Every network of the model, each warmed up once and checked to upscale by its native scale."""
    return LoadedModel({(variant.scale, variant.denoise): _load_variant(spec, variant, choice, settings)
                        for variant in spec.variants})


def _load_variant(spec: ModelSpec, variant: Variant, choice: Choice, settings: Settings) -> Network:
    import numpy as np

    network = choice.module.network(spec, variant, settings, choice)
    shape = network.predict(np.zeros((1, WARM_UP_SIDE, WARM_UP_SIDE, 3), np.float32)).shape
    network.release_memory()
    if shape[1:3] != (WARM_UP_SIDE * variant.scale,) * 2:
        raise ValueError(f"the {variant.scale}x network of {spec.name} turns {WARM_UP_SIDE}x{WARM_UP_SIDE} "
                         f"into {shape[2]}x{shape[1]}")
    return network


def models_dir_cards(settings: Settings) -> dict[str, ModelCard]:
    """The cards of the operator's models in MODELS_DIR by id (none when it is unset); built-in ids stay theirs."""
    if settings.models_dir is None:
        return {}
    from core.models import operator_models

    found = operator_models.scan(settings.models_dir, SPECS, settings.models_dir_pickles)
    for model in found.values():
        log.info("MODELS_DIR: model %s from %s%s", model.id, model.files,
                 f" cannot be offered: {model.problem}" if model.problem else "")
    return {model_id: operator_models.card(model, UNMEASURED_WINDOW_BYTES) for model_id, model in found.items()}
