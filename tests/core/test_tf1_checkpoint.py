"""The original MAX SRGAN checkpoint: loaded into Keras and checked against a plain numpy network.

The checkpoint here is written with the exact variable names and shapes of the
original (``shared/reference/max-srgan-generator-variables.tsv``) and random
values; the numpy reference implements the network from its description, with
PyTorch's pixel-shuffle order written out, independently of the loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from core.models.tf1_checkpoint import (
    build_max_srgan,
    checkpoint_layout,
    pytorch_to_depth_to_space,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_TSV = ROOT.parent / "shared" / "reference" / "max-srgan-generator-variables.tsv"
SCOPE = "generator/generator_unit"
BLOCKS = 16
BN_EPSILON = 1e-3
TRAINABLE_PARAMETERS = 1_546_435


# ---- the checkpoint: names, shapes, random values, written as TensorFlow 1 does ----

def generator_variables() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every generator variable, spelled from the network's description."""
    variables: dict[str, tuple[int, ...]] = {}

    def conv(scope: str, kernel: int, cin: int, cout: int, bias: bool) -> None:
        variables[f"{SCOPE}/{scope}/Conv/weights"] = (kernel, kernel, cin, cout)
        if bias:
            variables[f"{SCOPE}/{scope}/Conv/biases"] = (cout,)

    def batch_norm(scope: str) -> None:
        for part in ("beta", "moving_mean", "moving_variance"):
            variables[f"{SCOPE}/{scope}/{part}"] = (64,)

    conv("input_stage/conv", 9, 3, 64, bias=True)
    variables[f"{SCOPE}/input_stage/Prelu/alpha"] = (64,)
    for index in range(1, BLOCKS + 1):
        conv(f"resblock_{index}/conv_1", 3, 64, 64, bias=False)
        batch_norm(f"resblock_{index}/BatchNorm")
        variables[f"{SCOPE}/resblock_{index}/Prelu/alpha"] = (64,)
        conv(f"resblock_{index}/conv_2", 3, 64, 64, bias=False)
        batch_norm(f"resblock_{index}/BatchNorm_1")
    conv("resblock_output/conv", 3, 64, 64, bias=False)
    batch_norm("resblock_output/BatchNorm")
    for stage in (1, 2):
        conv(f"subpixelconv_stage{stage}/conv", 3, 64, 256, bias=True)
        variables[f"{SCOPE}/subpixelconv_stage{stage}/Prelu/alpha"] = (64,)
    conv("output_stage/conv", 9, 64, 3, bias=True)
    return variables


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random values: scaled kernels, positive variances, small slopes, so the output is not flat."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in generator_variables().items():
        if name.endswith("/weights"):
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.normal(0.0, 0.6 / np.sqrt(fan_in), shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("/alpha"):
            value = rng.uniform(0.05, 0.3, shape)
        else:  # biases, beta, moving_mean
            value = rng.normal(0.0, 0.1, shape)
        weights[name] = value.astype(np.float32)
    return weights


def write_checkpoint(prefix: Path, weights: dict[str, np.ndarray]) -> Path:
    """A TF1-style checkpoint (``prefix.index`` + ``prefix.data-00000-of-00001``) holding names verbatim."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(weights[name]) for name in names])
    return prefix


# ---- the numpy reference network ----

def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """'same' zero-padded, stride-1 convolution of (H, W, C) by a TF-layout (k, k, C, O) kernel."""
    pad = kernel.shape[0] // 2
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(padded, kernel.shape[:2], axis=(0, 1))  # (H, W, C, kh, kw)
    out = np.tensordot(windows, kernel, axes=([3, 4, 2], [0, 1, 2]))
    return out if bias is None else out + bias


def np_batch_norm(x: np.ndarray, w: dict[str, np.ndarray], scope: str) -> np.ndarray:
    s = f"{SCOPE}/{scope}"
    return (x - w[f"{s}/moving_mean"]) / np.sqrt(w[f"{s}/moving_variance"] + BN_EPSILON) + w[f"{s}/beta"]


def np_prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, alpha * x)


def np_pixel_shuffle(x: np.ndarray) -> np.ndarray:
    """PyTorch order: output (2h+i, 2w+j, c) = input (h, w, 4c + 2i + j)."""
    height, width, depth = x.shape
    blocks = x.reshape(height, width, depth // 4, 2, 2)  # (h, w, c, i, j)
    return blocks.transpose(0, 3, 1, 4, 2).reshape(2 * height, 2 * width, depth // 4)


def reference_forward(w: dict[str, np.ndarray], rgb: np.ndarray) -> np.ndarray:
    """The MAX SRGAN generator on one (H, W, 3) image in [0, 1]; (4H, 4W, 3), not clipped."""
    w = {name: value.astype(np.float64) for name, value in w.items()}

    def conv(x, scope, bias=True):
        return np_conv(x, w[f"{SCOPE}/{scope}/Conv/weights"], w[f"{SCOPE}/{scope}/Conv/biases"] if bias else None)

    x = np_prelu(conv(rgb.astype(np.float64), "input_stage/conv"), w[f"{SCOPE}/input_stage/Prelu/alpha"])
    stage_input = x
    for index in range(1, BLOCKS + 1):
        block = f"resblock_{index}"
        y = np_batch_norm(conv(x, f"{block}/conv_1", bias=False), w, f"{block}/BatchNorm")
        y = np_prelu(y, w[f"{SCOPE}/{block}/Prelu/alpha"])
        y = np_batch_norm(conv(y, f"{block}/conv_2", bias=False), w, f"{block}/BatchNorm_1")
        x = x + y
    x = np_batch_norm(conv(x, "resblock_output/conv", bias=False), w, "resblock_output/BatchNorm") + stage_input
    for stage in (1, 2):
        x = np_pixel_shuffle(conv(x, f"subpixelconv_stage{stage}/conv"))
        x = np_prelu(x, w[f"{SCOPE}/subpixelconv_stage{stage}/Prelu/alpha"])
    return (conv(x, "output_stage/conv") + 1.0) / 2.0


def small_image(seed: int = 1, height: int = 12, width: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- fixtures ----

@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_weights()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory, weights) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("max-srgan") / "model", weights)


@pytest.fixture(scope="module")
def model(prefix):
    return build_max_srgan(prefix)


# ---- tests ----

def test_layout_consumes_every_generator_variable_exactly_once():
    names = [name for source in checkpoint_layout() for name in source.names]
    assert len(names) == len(set(names)) == 159
    assert set(names) == set(generator_variables())


def test_variable_names_and_shapes_are_those_of_the_reference_list():
    if not REFERENCE_TSV.is_file():
        pytest.skip(f"reference list not found at {REFERENCE_TSV}")
    rows = [line.split("\t") for line in REFERENCE_TSV.read_text().splitlines()[1:] if line]
    reference = {name: tuple(int(size) for size in shape.strip("[]").split(",")) for name, shape, _ in rows}
    assert generator_variables() == reference


def test_permuted_channels_make_depth_to_space_give_pytorch_shuffle_order():
    features = np.random.default_rng(2).normal(size=(3, 5, 256)).astype(np.float32)
    shuffled = tf.nn.depth_to_space(pytorch_to_depth_to_space(features)[None], 2)[0].numpy()
    np.testing.assert_array_equal(shuffled, np_pixel_shuffle(features))
    assert not np.array_equal(tf.nn.depth_to_space(features[None], 2)[0].numpy(), shuffled)


def test_loaded_model_equals_numpy_reference_before_clipping(model, weights):
    rgb = small_image() / 255.0
    expected = reference_forward(weights, rgb)
    got = model(rgb[None].astype(np.float32), training=False)[0].numpy()
    assert got.shape == (48, 40, 3)
    assert expected.std() > 0.03 and np.mean((expected > 0) & (expected < 1)) > 0.5, "test weights give a flat output"
    assert np.abs(got - expected).max() <= 1e-4


def test_loaded_model_has_the_original_parameter_count(model):
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == TRAINABLE_PARAMETERS


def test_folder_holding_model_files_stands_for_its_checkpoint(prefix, model):
    rgb = small_image(seed=3)[None] / np.float32(255)
    from_folder = build_max_srgan(prefix.parent)
    np.testing.assert_array_equal(from_folder(rgb, training=False).numpy(), model(rgb, training=False).numpy())


def test_training_state_beside_the_generator_is_ignored(tmp_path, weights, model):
    extra = dict(weights)
    extra["global_step"] = np.array(200000, np.float32)
    extra["discriminator/discriminator_unit/input_stage/conv/Conv/weights"] = np.ones((3, 3, 3, 64), np.float32)
    extra[f"{SCOPE}/input_stage/conv/Conv/weights/Adam"] = np.ones((9, 9, 3, 64), np.float32)
    loaded = build_max_srgan(write_checkpoint(tmp_path / "model", extra))
    rgb = small_image(seed=4)[None] / np.float32(255)
    np.testing.assert_array_equal(loaded(rgb, training=False).numpy(), model(rgb, training=False).numpy())


def test_missing_variable_is_a_value_error_naming_it(tmp_path, weights):
    name = f"{SCOPE}/resblock_7/BatchNorm_1/moving_variance"
    incomplete = {key: value for key, value in weights.items() if key != name}
    with pytest.raises(ValueError, match=f"{name} is missing"):
        build_max_srgan(write_checkpoint(tmp_path / "model", incomplete))


@pytest.mark.parametrize("name, shape", [
    (f"{SCOPE}/subpixelconv_stage2/conv/Conv/weights", (3, 3, 64, 128)),
    (f"{SCOPE}/resblock_3/Prelu/alpha", (1,)),
])
def test_wrong_shape_is_a_value_error_naming_variable_and_shapes(tmp_path, weights, name, shape):
    wrong = dict(weights, **{name: np.zeros(shape, np.float32)})
    with pytest.raises(ValueError, match=rf"{name} has shape \[{', '.join(map(str, shape))}\]"):
        build_max_srgan(write_checkpoint(tmp_path / "model", wrong))


def test_generator_variable_the_network_lacks_is_a_value_error(tmp_path, weights):
    name = f"{SCOPE}/resblock_1/BatchNorm/gamma"
    with_gamma = dict(weights, **{name: np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=f"{name} is not part of the MAX SRGAN generator"):
        build_max_srgan(write_checkpoint(tmp_path / "model", with_gamma))


def test_path_without_checkpoint_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no readable TensorFlow checkpoint"):
        build_max_srgan(tmp_path / "model")
