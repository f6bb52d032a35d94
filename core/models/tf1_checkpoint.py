"""The original MAX SRGAN generator, read from its TensorFlow-1 checkpoint.

The MAX Image Super-Resolution Generator restored a TF1 checkpoint (prefix
``model`` in its model assets) written by SRGAN-tensorflow. Its 159 generator
variables are read by name with ``tf.train.load_checkpoint`` (no TF1 graph is
built) and assigned to the Keras SRResNet of :mod:`core.models.srresnet`,
layer by layer in the model's order.

Differences from the other SRResNet weights, all set when building the model:
no bias in the residual convolutions, BatchNorm without gamma and with
epsilon 1e-3, no tanh on the output (still read as [-1, 1]). The checkpoint's
pixel shuffle uses PyTorch's channel order, so the subpixel convolutions'
output channels are permuted to make ``tf.nn.depth_to_space`` produce it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.models.srresnet import build_srresnet

log = logging.getLogger(__name__)

SCOPE = "generator/generator_unit"
NUM_BLOCKS = 16
SHUFFLE = 2
# The file-name stem of the checkpoint inside the original MAX model assets (assets/SRGAN/model.*).
ASSET_STEM = "model"

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LayerSource:
    """Where one weighted Keras layer's arrays come from, in the layer's weight order."""

    layer_type: type[keras.layers.Layer]
    names: tuple[str, ...]
    transforms: tuple[Transform, ...]


def _keep(array: np.ndarray) -> np.ndarray:
    return array


def _conv(scope: str, bias: bool, shuffle: bool = False) -> LayerSource:
    names = (f"{SCOPE}/{scope}/Conv/weights",) + ((f"{SCOPE}/{scope}/Conv/biases",) if bias else ())
    transform = pytorch_to_depth_to_space if shuffle else _keep
    return LayerSource(keras.layers.Conv2D, names, (transform,) * len(names))


def _batch_norm(scope: str) -> LayerSource:
    # scale=False: the checkpoint has no gamma; Keras then holds beta, mean, variance in this order.
    names = tuple(f"{SCOPE}/{scope}/{part}" for part in ("beta", "moving_mean", "moving_variance"))
    return LayerSource(keras.layers.BatchNormalization, names, (_keep,) * 3)


def _prelu(scope: str) -> LayerSource:
    # One alpha per channel in the checkpoint; Keras shares it over height and width: (1, 1, C).
    return LayerSource(keras.layers.PReLU, (f"{SCOPE}/{scope}/Prelu/alpha",), (lambda a: a.reshape(1, 1, -1),))


def checkpoint_layout(num_blocks: int = NUM_BLOCKS) -> list[LayerSource]:
    """The checkpoint's variables for each weighted layer of the SRResNet, in the model's layer order."""
    layout = [_conv("input_stage/conv", bias=True), _prelu("input_stage")]
    for index in range(1, num_blocks + 1):
        block = f"resblock_{index}"
        layout += [
            _conv(f"{block}/conv_1", bias=False), _batch_norm(f"{block}/BatchNorm"), _prelu(block),
            _conv(f"{block}/conv_2", bias=False), _batch_norm(f"{block}/BatchNorm_1"),
        ]
    layout += [_conv("resblock_output/conv", bias=False), _batch_norm("resblock_output/BatchNorm")]
    for stage in (1, 2):
        layout += [_conv(f"subpixelconv_stage{stage}/conv", bias=True, shuffle=True),
                   _prelu(f"subpixelconv_stage{stage}")]
    layout.append(_conv("output_stage/conv", bias=True))
    return layout


def pytorch_to_depth_to_space(array: np.ndarray) -> np.ndarray:
    """Reorder a subpixel conv's output channels (last axis) from PyTorch's shuffle order to TensorFlow's.

    PyTorch's pixel shuffle puts channel ``4c + 2i + j`` at output (2h+i, 2w+j, c);
    ``tf.nn.depth_to_space`` takes channel ``(2i + j) * C + c`` for it.
    """
    channels = array.shape[-1] // (SHUFFLE * SHUFFLE)
    depth_to_space_index = np.arange(array.shape[-1])
    offset, channel = np.divmod(depth_to_space_index, channels)
    return array[..., channel * SHUFFLE * SHUFFLE + offset]


def build_max_srgan(prefix: Path | str) -> keras.Model:
    """The MAX SRGAN generator with the checkpoint's weights: RGB in [0, 1] in, RGB about [0, 1] out.

    ``prefix`` is the checkpoint prefix (``.../model`` for ``model.index`` and
    ``model.data-*``) or a folder holding one. Raises ValueError naming the
    variable when the checkpoint is not this network's.
    """
    reader = _open(Path(prefix))
    model = build_srresnet(num_blocks=NUM_BLOCKS, conv_bias=False, bn_scale=False, bn_epsilon=1e-3,
                           tanh_output=False)
    layout = checkpoint_layout()
    _check_variables(reader, layout, Path(prefix))
    assign(model, layout, reader)
    return model


def _open(prefix: Path) -> tf.train.CheckpointReader:
    """A reader for ``prefix``; a folder may stand for its own checkpoint or for ``folder/model``."""
    if prefix.is_dir() and (prefix / f"{ASSET_STEM}.index").is_file():
        prefix = prefix / ASSET_STEM
    try:
        return tf.train.load_checkpoint(str(prefix))
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"no readable TensorFlow checkpoint at {prefix} (expected {prefix}.index and "
                         f"{prefix}.data-*): {error}") from None


def _check_variables(reader: tf.train.CheckpointReader, layout: Sequence[LayerSource], prefix: Path) -> None:
    """Every expected variable must exist, and nothing else of the generator may be left unused."""
    stored = reader.get_variable_to_shape_map()
    expected = [name for source in layout for name in source.names]
    missing = [name for name in expected if name not in stored]
    if missing:
        raise ValueError(f"{prefix}: variable {missing[0]} is missing ({len(missing)} of the {len(expected)} "
                         f"MAX SRGAN generator variables are); is this the MAX SRGAN checkpoint?")
    unused = [name for name in stored if name.startswith(f"{SCOPE}/") and not _is_expected(name, expected)]
    if unused:
        raise ValueError(f"{prefix}: variable {sorted(unused)[0]} is not part of the MAX SRGAN generator "
                         f"({len(unused)} such variables); the checkpoint holds a different network")
    others = len(stored) - len(expected)
    if others:
        log.info("%s: ignoring %d variables that are not generator weights (training state)", prefix, others)


def _is_expected(name: str, expected: Sequence[str]) -> bool:
    # Optimizer slots of a generator variable (``.../weights/Adam``) are training state, not weights.
    return any(name == want or name.startswith(f"{want}/") for want in expected)


def assign(model: keras.Model, layout: Sequence[LayerSource], reader: tf.train.CheckpointReader) -> None:
    """Assign each layout entry to the model's next weighted layer, checking layer type and every shape."""
    weighted = [layer for layer in model.layers if layer.weights]
    if len(weighted) != len(layout):
        raise ValueError(f"the model has {len(weighted)} weighted layers, the checkpoint layout {len(layout)}")
    consumed = 0
    for layer, source in zip(weighted, layout):
        if not isinstance(layer, source.layer_type) or len(layer.weights) != len(source.names):
            raise ValueError(f"layer {layer.name} ({type(layer).__name__}, {len(layer.weights)} weights) "
                             f"cannot take {source.names}")
        arrays = []
        for weight, name, transform in zip(layer.weights, source.names, source.transforms):
            stored = reader.get_tensor(name)
            wanted = _checkpoint_shape(source, weight.shape)
            if list(stored.shape) != wanted:
                raise ValueError(f"variable {name} has shape {list(stored.shape)}; the MAX SRGAN generator "
                                 f"has {wanted} there (layer {layer.name})")
            arrays.append(np.asarray(transform(stored), dtype=weight.dtype))
        layer.set_weights(arrays)
        consumed += len(arrays)
    log.info("assigned %d checkpoint variables to %d layers", consumed, len(weighted))


def _checkpoint_shape(source: LayerSource, keras_shape: Sequence[int]) -> list[int]:
    """The shape the checkpoint must hold for a Keras weight of ``keras_shape`` (TensorFlow layout)."""
    if source.layer_type is keras.layers.PReLU:
        return [int(keras_shape[-1])]
    return [int(size) for size in keras_shape]
