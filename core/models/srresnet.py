"""SRResNet, the generator of SRGAN (Ledig et al. 2017), built with Keras 3.

Both weight sets served here use this architecture; they differ in small
details (bias in the residual convolutions, BatchNorm scale, the output
activation), which are arguments of :func:`build_srresnet`.
"""
from __future__ import annotations

import itertools

import keras
import numpy as np
import tensorflow as tf

NUM_FILTERS = 64
OUTPUT_KERNEL = 9


class DepthToSpace(keras.layers.Layer):
    """Pixel shuffle by ``block_size`` in TensorFlow's channel order."""

    def __init__(self, block_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.nn.depth_to_space(inputs, self.block_size)


def _prelu(name: str | None = None) -> keras.layers.PReLU:
    return keras.layers.PReLU(shared_axes=[1, 2], name=name)


def _residual_block(x_in: keras.KerasTensor, conv_bias: bool, bn_scale: bool, bn_epsilon: float) -> keras.KerasTensor:
    x = keras.layers.Conv2D(NUM_FILTERS, 3, padding="same", use_bias=conv_bias)(x_in)
    x = keras.layers.BatchNormalization(scale=bn_scale, epsilon=bn_epsilon)(x)
    x = _prelu()(x)
    x = keras.layers.Conv2D(NUM_FILTERS, 3, padding="same", use_bias=conv_bias)(x)
    x = keras.layers.BatchNormalization(scale=bn_scale, epsilon=bn_epsilon)(x)
    return keras.layers.Add()([x_in, x])


def _upsample(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    x = keras.layers.Conv2D(NUM_FILTERS * 4, 3, padding="same", name=f"{name}_conv")(x)
    x = DepthToSpace(2, name=f"{name}_shuffle")(x)
    return _prelu(f"{name}_prelu")(x)


def build_srresnet(
    num_blocks: int = 16,
    conv_bias: bool = True,
    bn_scale: bool = True,
    bn_epsilon: float = 1e-3,
    tanh_output: bool = True,
) -> keras.Model:
    """The 4x generator: RGB in [0, 1] in, RGB in [0, 1] out (not clipped).

    The last convolution yields values in [-1, 1] (through tanh when
    ``tanh_output``), mapped to [0, 1] by (x + 1) / 2.
    """
    x_in = keras.Input(shape=(None, None, 3), name="rgb")
    x = keras.layers.Conv2D(NUM_FILTERS, 9, padding="same")(x_in)
    x = skip = _prelu()(x)
    for _ in range(num_blocks):
        x = _residual_block(x, conv_bias, bn_scale, bn_epsilon)
    x = keras.layers.Conv2D(NUM_FILTERS, 3, padding="same", use_bias=conv_bias)(x)
    x = keras.layers.BatchNormalization(scale=bn_scale, epsilon=bn_epsilon)(x)
    x = keras.layers.Add()([skip, x])
    x = _upsample(x, "upsample_1")
    x = _upsample(x, "upsample_2")
    x = keras.layers.Conv2D(3, OUTPUT_KERNEL, padding="same", name="output_conv")(x)
    return keras.Model(x_in, _to_unit_range(x, tanh_output), name="srresnet")


def _to_unit_range(x: keras.KerasTensor, tanh_output: bool) -> keras.KerasTensor:
    if tanh_output:
        x = keras.layers.Activation("tanh", name="output_tanh")(x)
    return keras.layers.Rescaling(0.5, offset=0.5)(x)


def fold_output_convolution(model: keras.Model) -> keras.Model:
    """The same network with its output convolution moved in front of the last pixel shuffle.

    The 9x9 convolution from 64 channels to 3 at 4x resolution is the least efficient layer on a
    CPU (about 30% of the time for 11% of the work: 3 output channels fill no vector registers)
    and reads the largest tensor. PReLU acts per channel, so it commutes with the shuffle, and a
    9x9 convolution after a 2x shuffle equals a 5x5 convolution before it with 4x the outputs
    (one per sub-pixel). Same results to float rounding, 5-19% less time and no 4x-resolution
    64-channel tensor (docs/speed.md).
    """
    shuffle = model.get_layer("upsample_2_shuffle")
    output_conv = model.get_layer("output_conv")
    block = shuffle.block_size
    prelu = _prelu("upsample_2_prelu_folded")
    conv = keras.layers.Conv2D(output_conv.filters * block * block, output_conv.kernel_size[0] // block + 1,
                               padding="same", name="output_conv_folded")
    x = conv(prelu(shuffle.input))
    x = DepthToSpace(block, name="output_shuffle")(x)
    folded = keras.Model(model.input, _to_unit_range(x, _has_tanh(model)), name=f"{model.name}_folded")
    (alpha,) = model.get_layer("upsample_2_prelu").get_weights()
    prelu.set_weights([np.tile(alpha, (1, 1, block * block))])
    kernel, bias = output_conv.get_weights()
    conv.set_weights([_subpixel_kernel(kernel, block), np.tile(bias, block * block)])
    return folded


def _has_tanh(model: keras.Model) -> bool:
    return any(layer.name == "output_tanh" for layer in model.layers)


def _subpixel_kernel(kernel: np.ndarray, block: int) -> np.ndarray:
    """A (k, k, c, o) kernel applied after depth_to_space(block), as a kernel applied before it.

    Low-resolution channel (i*block + j)*c + ch is high-resolution pixel (block*y + i, block*x + j),
    channel ch (TensorFlow's shuffle order); new output channel (a*block + b)*o + out is output
    sub-pixel (a, b). Output row block*y + a reads high-resolution rows up to k//2 away; tap p of
    the new kernel (centre r) at sub-pixel i is high-resolution row block*(y + p - r) + i, which is
    tap block*(p - r) + i - a + k//2 of the old kernel, or zero where that falls outside it.
    """
    size, _, channels, outputs = kernel.shape
    folded_size = size // block + 1
    shift = size // 2 - block * (folded_size // 2)
    folded = np.zeros((folded_size, folded_size, block * block * channels, block * block * outputs), kernel.dtype)
    taps, offsets = range(folded_size), range(block)
    for p, q, i, j, a, b in itertools.product(taps, taps, offsets, offsets, offsets, offsets):
        row, col = block * p + i - a + shift, block * q + j - b + shift
        if 0 <= row < size and 0 <= col < size:
            source = slice((i * block + j) * channels, (i * block + j + 1) * channels)
            target = slice((a * block + b) * outputs, (a * block + b + 1) * outputs)
            folded[p, q, source, target] = kernel[row, col]
    return folded
