"""MODELS_DIR: finding the operator's models, reading their sidecars, running ONNX files, measuring margins."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config import load_settings
from core.models import operator_models
from core.backends import Choice
from core.backends.openvino import OnnxRunner
from core.models.operator_models import OperatorModelError
from core.models.registry import ModelRegistry
from core.models.specs import SPECS
from core.tiling import plan_tiles
from core.options import BY_NAME, OptionContext
from core.models.margin_probe import MARGIN_CANDIDATES, PROBE_TILE, probe_tiles, seam_free_margin
from tests.conftest import SAMPLES
from tests.onnx_nets import SubpixelNet

SIDECAR = {"title": "Test net", "scale": 4, "license": "CC0-1.0"}


def write_sidecar(folder: Path, name: str, **fields: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps({**SIDECAR, **fields}))


def photo(name: str = "chelsea.png") -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"), np.float32) / 255


def problems(folder: Path) -> dict[str, str | None]:
    return {model_id: model.problem for model_id, model in operator_models.scan(folder, SPECS).items()}


# --- finding models and reading sidecars ---------------------------------------------------------

def test_a_model_with_its_sidecar_is_found_under_its_name(tmp_path):
    SubpixelNet.random(4).save(tmp_path / "espcn.onnx")
    write_sidecar(tmp_path, "espcn", use_when="Tests", margin=4)
    (tmp_path / "README.txt").write_text("not a model")
    found = operator_models.scan(tmp_path, SPECS)
    assert list(found) == ["espcn"]
    model = found["espcn"]
    assert model.problem is None and model.kind == "onnx"
    assert model.sidecar.scale == 4 and model.sidecar.margin == 4 and model.sidecar.use_when == "Tests"
    assert operator_models.describe(model) == {
        "title": "Test net", "use_when": "Tests", "architecture": "ONNX graph, run by OpenVINO",
        "weights": "MODELS_DIR: espcn.onnx", "license": "CC0-1.0"}


@pytest.mark.parametrize(("text", "problem"), [
    ('{"title": "x", "scale": 4', "net.json is not valid JSON: Expecting ',' delimiter at line 1 column 26"),
    ('["title"]', "net.json must hold one JSON object {...}, not a list"),
    ('{"title": "x", "scale": "four", "license": "MIT"}', "net.json: scale: Input should be a valid integer"),
    ('{"title": "x", "scale": 1, "license": "MIT"}', "net.json: scale: Input should be greater than or equal to 2"),
    ('{"title": "x", "scale": 4}', "net.json: license: Field required"),
    ('{"title": "x", "scale": 4, "license": "MIT", "margn": 8}', "net.json: margn: Extra inputs are not permitted"),
    ('{"title": "x", "scale": 4, "license": "MIT", "margin": -1}', "net.json: margin: Input should be greater than or equal to 0"),
    # Hostile sidecars: each fails its model, none stops the scan (and with it the server's start).
    ("[" * 10_000 + "]" * 10_000, "net.json nests arrays or objects too deeply to be read"),
    ('{"title": ' + '{"a":' * 10_000 + "1" + "}" * 10_000 + "}",
     "net.json nests arrays or objects too deeply to be read"),
    ('{"scale": ' + "1" * 5000 + "}",
     "net.json is not JSON this service reads: Exceeds the limit (4300 digits) for integer string conversion: "
     "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"),
    ('{"title": "' + "x" * 64 * 1024 + '"}', "net.json is larger than 64 KiB, the most a sidecar may hold"),
    # An unknown key is the operator's words: shown printable, and cut short.
    ('{"title": "x", "scale": 4, "license": "MIT", "a\\nb": 1, "' + "k" * 100 + '": 2}',
     "net.json: 'a\\nb': Extra inputs are not permitted; " + "k" * 40 + ": Extra inputs are not permitted"),
])
def test_a_malformed_sidecar_is_the_models_problem(tmp_path, text, problem):
    SubpixelNet.random(4).save(tmp_path / "net.onnx")
    (tmp_path / "net.json").write_text(text)
    assert problems(tmp_path) == {"net": problem}


def test_a_sidecar_that_cannot_be_read_fails_its_model_and_the_others_load(tmp_path):
    SubpixelNet.random(2).save(tmp_path / "good.onnx")
    write_sidecar(tmp_path, "good", scale=2, margin=4)
    SubpixelNet.random(2).save(tmp_path / "mem.onnx")
    (tmp_path / "mem.json").symlink_to("/proc/self/mem")
    (tmp_path / "deep.json").write_text("[" * 10_000)
    SubpixelNet.random(2).save(tmp_path / "deep.onnx")
    # What the server's start runs: the registry scans MODELS_DIR as it is made.
    registry = ModelRegistry(load_settings(models="srgan", default_model="srgan", models_dir=tmp_path),
                             Choice("openvino", "cpu"))
    assert registry.states() == {"srgan": "pending", "deep": "pending", "good": "pending", "mem": "pending"}
    assert problems(tmp_path) == {
        "deep": "deep.json nests arrays or objects too deeply to be read", "good": None,
        "mem": "mem.json is a link to a file outside MODELS_DIR: only files within it are read"}
    assert load_one(tmp_path, "good").scale == 2
    # A sidecar that opens but fails to read, as /proc/self/mem does at its first byte, is its model's problem too.
    assert operator_models._read_sidecar(Path("/proc/self/mem"), operator_models.Sidecar) == (
        None, "mem cannot be read (Input/output error)")


def test_every_file_of_a_model_format_is_listed_and_links_out_of_the_folder_are_refused(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    SubpixelNet.random(2).save(tmp_path / "elsewhere.onnx")
    SubpixelNet.random(2).save(folder / "good.onnx")
    for name in ("good", "alias", "outside", "dangling", "nl\nname"):
        write_sidecar(folder, name, scale=2)
    (folder / "alias.onnx").symlink_to("good.onnx")  # a link within the folder is read
    (folder / "outside.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    (folder / "dangling.onnx").symlink_to(folder / "gone.onnx")
    (folder / "dirmodel.pth").mkdir()
    os.mkfifo(folder / "fifo.json")  # opened, it would hold the start until something writes to it
    SubpixelNet.random(2).save(folder / "nl\nname.onnx")
    for name in ("script.pt", "trained.ckpt", "LOUD.PTH", "Mixed.Onnx"):
        (folder / name).write_bytes(b"weights")
    (folder / "README.txt").write_text("not a model")
    (folder / ".hidden.pth").write_bytes(b"passed over")
    served = ("served are NAME.safetensors and NAME.pth (PyTorch weights), NAME.onnx, and NAME.param with NAME.bin "
              "(ncnn), each with NAME.json beside it where needed")
    assert problems(folder) == {
        "good": None,
        "alias": None,
        "outside": "outside.onnx is a link to a file outside MODELS_DIR: only files within it are read",
        "dangling": "dangling.onnx is a symbolic link to nothing",
        "dirmodel": "dirmodel.pth is a folder, not a model file",
        "fifo": "fifo.json is not a regular file, not a model file",
        # A name no model id can be is shown as ascii() writes it, in its id and its reason.
        "'nl\\nname.onnx'": "'nl\\nname' cannot be a model id: use lower-case letters, digits, '-' and '_' "
                            "(a request's model is read in lower case)",
        "script.pt": "script.pt is not served (a .pt is TorchScript, a program, which is refused: a state dict saved "
                     f"as .pt is read as NAME.pth); {served}",
        "trained.ckpt": "trained.ckpt is not served (a training checkpoint: one that holds only tensors is read as "
                        f"NAME.pth); {served}",
        "LOUD.PTH": f"LOUD.PTH is not served (suffixes are read in lower case: name it LOUD.pth); {served}",
        "Mixed.Onnx": f"Mixed.Onnx is not served (suffixes are read in lower case: name it Mixed.onnx); {served}",
    }
    assert load_one(folder, "alias").scale == 2


@pytest.mark.timeout(60)  # a FIFO read as a model file would hold the load for good
def test_a_file_removed_or_replaced_after_the_scan_fails_its_model_at_load(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    SubpixelNet.random(2).save(tmp_path / "elsewhere.onnx")
    for name in ("removed", "fifo", "outside", "kept"):
        SubpixelNet.random(2).save(folder / f"{name}.onnx")
        write_sidecar(folder, name, scale=2, margin=8)
    found = operator_models.scan(folder, SPECS)
    assert all(model.problem is None for model in found.values())
    (folder / "removed.onnx").unlink()
    (folder / "fifo.onnx").unlink()
    os.mkfifo(folder / "fifo.onnx")
    (folder / "outside.onnx").unlink()
    (folder / "outside.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    reasons = {
        "removed": "removed.onnx was removed from MODELS_DIR after it was read",
        "fifo": "fifo.onnx is not a regular file, not a model file (it changed after MODELS_DIR was read)",
        "outside": "outside.onnx is a link to a file outside MODELS_DIR: only files within it are read (it changed "
                   "after MODELS_DIR was read)",
    }
    for name, reason in reasons.items():
        with pytest.raises(OperatorModelError) as failed:
            operator_models.load(found[name], Choice("openvino", "cpu"), 0)
        assert str(failed.value) == reason
    assert operator_models.load(found["kept"], Choice("openvino", "cpu"), 0).network.scale == 2


def test_each_incomplete_or_clashing_model_has_its_own_problem(tmp_path):
    for name in ("alone", "srgan", "both", "half", "bad.name"):
        SubpixelNet.random(2).save(tmp_path / f"{name}.onnx")
    for name in ("srgan", "both", "bad.name", "orphan"):
        write_sidecar(tmp_path, name)
    (tmp_path / "both.param").write_text("7767517\n")
    (tmp_path / "half.onnx").unlink()
    (tmp_path / "half.param").write_text("7767517\n")
    write_sidecar(tmp_path, "half")
    assert problems(tmp_path) == {
        "alone": "no sidecar alone.json (title, scale and license are required)",
        "bad.name.onnx": "'bad.name' cannot be a model id: use lower-case letters, digits, '-' and '_' "
                         "(a request's model is read in lower case)",
        "both": "both both.onnx and both.param are there: keep one model per name",
        "half": "half.param has no half.bin",
        "orphan": "orphan.json describes no model: orphan.onnx, orphan.safetensors, orphan.pth "
                  "or orphan.param with orphan.bin is missing",
        # A built-in id stays the built-in model's; the file is listed under its file name.
        "srgan.onnx": "srgan is the id of a built-in model; rename the files",
    }


def test_every_id_offered_can_be_asked_for_and_one_in_capitals_is_refused(tmp_path):
    """A request's model is matched in lower case: a file named in capitals would be listed, load, and never run."""
    for name in ("lower", "Upper"):
        SubpixelNet.random(2).save(tmp_path / f"{name}.onnx")
        write_sidecar(tmp_path, name)
    found = operator_models.scan(tmp_path, SPECS)
    offered = tuple(model_id for model_id, model in found.items() if model.problem is None)
    context = OptionContext(offered, offered[0])
    assert [BY_NAME["model"].read(model_id, context, None) for model_id in offered] == list(offered)
    assert found["Upper.onnx"].problem == ("'Upper' cannot be a model id: use lower-case letters, digits, '-' and '_' "
                                           "(a request's model is read in lower case)")


def test_models_dir_that_is_not_a_folder_stops_the_start(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        operator_models.scan(tmp_path / "missing", SPECS)


# --- ONNX through OpenVINO ------------------------------------------------------------------------

@pytest.mark.parametrize(("scale", "fixed_side"), [(4, None), (2, 32)])
def test_onnx_file_computes_what_numpy_computes(tmp_path, scale, fixed_side):
    net = SubpixelNet.random(scale, seed=scale)
    runner = OnnxRunner(net.save(tmp_path / "net.onnx", input_side=fixed_side), threads=1)
    # Any batch and tile shape, also for a file exported for one fixed input size.
    batch = np.stack([photo()[:20, :28], photo()[30:50, 40:68]])
    out = runner(batch)
    assert out.shape == (2, 20 * scale, 28 * scale, 3) and out.dtype == np.float32
    for image, result in zip(batch, out):
        np.testing.assert_allclose(result, net.reference(image), atol=1e-5)
    assert runner.parameters == net.parameters


def test_an_fp16_onnx_export_takes_and_gives_float32(tmp_path):
    net = SubpixelNet.random(2, seed=5)
    runner = OnnxRunner(net.save(tmp_path / "half.onnx", fp16=True), threads=1)
    image = photo()[:16, :24]
    out = runner(image[None])
    assert out.dtype == np.float32 and out.shape == (1, 32, 48, 3)
    # fp16 weights and activations: within a fraction of one grey level of the fp32 computation.
    assert np.abs(out[0] - net.reference(image)).max() < 2e-3


# --- measuring the margin -------------------------------------------------------------------------

def box_blur_4x(radius: int):
    """A predict function whose output pixel depends on the input up to ``radius`` pixels away."""
    def predict(batch: np.ndarray) -> np.ndarray:
        padded = np.pad(batch, ((0, 0), (radius, radius), (radius, radius), (0, 0)))
        height, width = batch.shape[1:3]
        blurred = sum(padded[:, dy:dy + height, dx:dx + width]
                      for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)) / (2 * radius + 1) ** 2
        return blurred.repeat(4, axis=1).repeat(4, axis=2)
    return predict


@pytest.mark.parametrize(("radius", "margin"), [(1, 8), (8, 8), (9, 16), (20, 32)])
def test_the_smallest_seam_free_margin_is_measured(radius, margin):
    measured, decibels = seam_free_margin(box_blur_4x(radius), [photo("camera.png"), photo("coffee.png")], 4)
    assert measured == margin and decibels >= 45


def test_a_model_that_sees_the_whole_image_has_no_seam_free_margin():
    def global_mean(batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(batch.mean(axis=(1, 2), keepdims=True), batch.shape).repeat(4, 1).repeat(4, 2)

    with pytest.raises(ValueError, match=r"tiles differ from the whole image at every margin up to 48 px \(best"):
        seam_free_margin(global_mean, [photo("coffee.png")], 4)


def patchwise_2x(patch: int):
    """A predict function that mixes each ``patch`` x ``patch`` block of its input counted from the window's corner
    (as patch or window attention does: DITN, SwinIR) and adds the pixel itself: tiles equal the whole image only
    where their windows start on the image's grid of blocks."""
    def predict(batch: np.ndarray) -> np.ndarray:
        out = batch.copy()
        for top in range(0, batch.shape[1], patch):
            for left in range(0, batch.shape[2], patch):
                block = (slice(None), slice(top, top + patch), slice(left, left + patch))
                out[block] = 0.5 * batch[block] + 0.5 * batch[block].mean(axis=(1, 2), keepdims=True)
        return out.repeat(2, axis=1).repeat(2, axis=2)
    return predict


def test_the_margin_of_a_network_that_needs_aligned_windows_is_measured_on_aligned_windows():
    # Blocks of 64: a window at a multiple of 64 holds whole blocks 32 pixels past a core that ends mid-block.
    photos = [photo("camera.png"), photo("coffee.png")]
    assert seam_free_margin(patchwise_2x(64), photos, 2, alignment=64)[0] == 32
    with pytest.raises(ValueError, match="tiles differ from the whole image at every margin"):
        seam_free_margin(patchwise_2x(64), photos, 2)  # windows at multiples of 16: another grid of blocks


@pytest.mark.parametrize("alignment", [1, 16, 32, 64])
def test_the_probe_windows_start_aligned_and_leave_exactly_the_margin_at_the_seam(alignment):
    for margin in MARGIN_CANDIDATES:
        side, tiles = probe_tiles(margin, alignment)
        spans = {tile.rows for tile in tiles}
        assert spans == {tile.cols for tile in tiles} and len(tiles) == 4
        first, second = sorted(spans, key=lambda span: span.window_start)
        assert first.window_start % alignment == second.window_start % alignment == 0
        assert first.window_size == second.window_size < side  # a real seam: no window is the whole square
        seam = second.core_start
        assert seam == first.core_start + first.core_size == side // 2
        assert first.window_start + first.window_size - seam == seam - second.window_start == margin
        assert second.window_start + second.window_size == side
        if alignment == 1:  # as the service's own planner tiles an unaligned network
            assert tiles == plan_tiles(side, side, PROBE_TILE, margin)


# --- loading: the checks that fail one model -------------------------------------------------------

def load_one(folder: Path, name: str):
    return operator_models.load(operator_models.scan(folder, SPECS)[name], Choice("openvino", "cpu"), 0).network


def test_a_loaded_onnx_model_has_its_scale_and_measured_margin(tmp_path):
    # A 17x17 kernel sees 8 pixels each way: a margin of 8 is exactly enough.
    SubpixelNet.random(2, kernel=17).save(tmp_path / "wide.onnx")
    write_sidecar(tmp_path, "wide", scale=2)
    network = load_one(tmp_path, "wide")
    assert (network.name, network.scale, network.margin) == ("wide", 2, 8)
    SubpixelNet.random(2, kernel=19).save(tmp_path / "wider.onnx")
    write_sidecar(tmp_path, "wider", scale=2)
    assert load_one(tmp_path, "wider").margin == 16


def test_a_stated_margin_is_used_as_is(tmp_path):
    SubpixelNet.random(4, kernel=19).save(tmp_path / "stated.onnx")
    write_sidecar(tmp_path, "stated", margin=12)
    assert load_one(tmp_path, "stated").margin == 12


def test_a_scale_that_the_file_does_not_make_fails_the_model(tmp_path):
    SubpixelNet.random(2).save(tmp_path / "twice.onnx")
    write_sidecar(tmp_path, "twice", scale=4)
    with pytest.raises(OperatorModelError, match=r"^twice.onnx makes images 2x larger, twice.json says scale 4$"):
        load_one(tmp_path, "twice")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_model_whose_output_is_not_finite_fails(tmp_path, value):
    # An infinite output would pass as white once clipped to [0, 1]: the runner's own output is what is checked.
    net = SubpixelNet.random(2)
    dataclasses.replace(net, bias=np.full_like(net.bias, value)).save(tmp_path / "broken.onnx")
    write_sidecar(tmp_path, "broken", scale=2, margin=4)
    with pytest.raises(OperatorModelError, match=r"^broken.onnx gives values that are not finite \(NaN or infinity\) "
                                                 r"for a 32x24 photo: its weights are broken$"):
        load_one(tmp_path, "broken")


def test_a_broken_onnx_file_fails_without_naming_its_folder(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 10)
    write_sidecar(tmp_path, "broken")
    with pytest.raises(OperatorModelError) as failure:
        load_one(tmp_path, "broken")
    assert str(failure.value) == "broken.onnx could not be read by OpenVINO as an ONNX model (details in the log)"
    assert str(tmp_path) in str(failure.value.__cause__)  # the log gets OpenVINO's own words


def test_an_ncnn_layer_the_reader_does_not_know_fails_the_model(tmp_path):
    (tmp_path / "lstm.param").write_text("7767517\n2 2\nInput in 0 1 data\nLSTM lstm 1 1 data output 0=3 1=12\n")
    (tmp_path / "lstm.bin").write_bytes(bytes(48))
    write_sidecar(tmp_path, "lstm")
    with pytest.raises(OperatorModelError, match=r"^lstm.bin: layer lstm of type LSTM is not supported$"):
        load_one(tmp_path, "lstm")


def test_an_ncnn_file_that_is_not_text_fails_the_model(tmp_path):
    (tmp_path / "binary.param").write_bytes(bytes(range(256)))
    (tmp_path / "binary.bin").write_bytes(bytes(8))
    write_sidecar(tmp_path, "binary")
    with pytest.raises(OperatorModelError, match=r"^binary.param is not ncnn param text$"):
        load_one(tmp_path, "binary")


# --- window memory measured at load ---------------------------------------------------------------

def test_a_measured_window_figure_counts_with_its_spread_and_never_below_the_hungriest_built_in_models():
    from core.models.window_memory import MEASUREMENT_SPREAD_PERCENT

    assert MEASUREMENT_SPREAD_PERCENT == 125
    assert operator_models.sized_window_bytes(53_239, 27_000) == 66_549  # rounded up
    assert operator_models.sized_window_bytes(40_000, 27_000) == 50_000
    assert operator_models.sized_window_bytes(20_000, 27_000) == 27_000  # 25,000 with its spread


def write_heavy_and_light(folder: Path) -> None:
    """A HAT of one block at HAT-L's width and attention window (heavy: its attention holds 6 heads of 256x256
    weights per 16x16 window) and a Compact of 8 features (light), random weights, each with a stated margin so
    that no margin is measured."""
    pytest.importorskip("spandrel")
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.HAT import HAT

    torch.manual_seed(0)
    modules = {"heavy": HAT(upscale=4, embed_dim=180, depths=[1], num_heads=[6], window_size=16, mlp_ratio=2,
                            num_feat=16, upsampler="pixelshuffle", resi_connection="1conv"),
               "light": Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)}
    for name, module in modules.items():
        save_file({key: tensor.contiguous() for key, tensor in module.state_dict().items()},
                  folder / f"{name}.safetensors")
        (folder / f"{name}.json").write_text(json.dumps({"margin": 8}))


def test_a_heavy_models_measured_window_memory_shrinks_its_tiles_and_a_light_one_keeps_the_default(tmp_path):
    from core.admission import InferenceSlot
    from core.memory import MEBIBYTE
    from core.models.specs import UNMEASURED_WINDOW_BYTES
    from core.service import Service

    write_heavy_and_light(tmp_path)
    # The speed measurement's windows kept small (TILE_SIZE), as the test is about memory.
    settings = load_settings(models="srgan", default_model="light", models_dir=tmp_path, tile_size=16)
    registry = ModelRegistry(settings, Choice("pytorch", "cpu"))
    registry.load_all()
    assert registry.states() == {"srgan": "ready", "heavy": "ready", "light": "ready"}
    unmeasured = UNMEASURED_WINDOW_BYTES["cpu"]["f32"]
    heavy, light = (registry.cards[name].window_bytes_per_pixel("f32", "cpu") for name in ("heavy", "light"))
    assert heavy > unmeasured and light == unmeasured
    assert {entry["id"]: entry.get("window_bytes_per_pixel") for entry in registry.describe()} == {
        "srgan": None, "heavy": heavy, "light": light}
    # A budget whose windows stay under MAX_WINDOW for either model, so that only their figures differ.
    budget_mb = registry.resident // MEBIBYTE + 1024
    service = Service(load_settings(models="srgan", default_model="light", models_dir=tmp_path, memory_budget_mb=budget_mb),
                      registry, InferenceSlot(1, 1.0, 1))
    tiles = {name: service.tile_size(registry.get(name), 1000, 1000, 0) for name in ("heavy", "light")}
    assert tiles["heavy"] < tiles["light"]
