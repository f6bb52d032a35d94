"""SRResNet, the generator of SRGAN (Ledig et al. 2017), built with Keras 3.

Both weight sets served here use this architecture; they differ in small
details (bias in the residual convolutions, BatchNorm scale, the output
activation), which are arguments of :func:`build_srresnet`.
"""
from __future__ import annotations

import keras
import tensorflow as tf

NUM_FILTERS = 64


class DepthToSpace(keras.layers.Layer):
    """Pixel shuffle by ``block_size`` in TensorFlow's channel order."""

    def __init__(self, block_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)


def _prelu():
    return keras.layers.PReLU(shared_axes=[1, 2])


def _residual_block(x_in, conv_bias: bool, bn_scale: bool, bn_epsilon: float):
    x = keras.layers.Conv2D(NUM_FILTERS, 3, padding="same", use_bias=conv_bias)(x_in)
    x = keras.layers.BatchNormalization(scale=bn_scale, epsilon=bn_epsilon)(x)
    x = _prelu()(x)
    x = keras.layers.Conv2D(NUM_FILTERS, 3, padding="same", use_bias=conv_bias)(x)
    x = keras.layers.BatchNormalization(scale=bn_scale, epsilon=bn_epsilon)(x)
    return keras.layers.Add()([x_in, x])


def _upsample(x):
    x = keras.layers.Conv2D(NUM_FILTERS * 4, 3, padding="same")(x)
    x = DepthToSpace(2)(x)
    return _prelu()(x)


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
    x = _upsample(x)
    x = _upsample(x)
    x = keras.layers.Conv2D(3, 9, padding="same", activation="tanh" if tanh_output else None)(x)
    x = keras.layers.Rescaling(0.5, offset=0.5)(x)
    return keras.Model(x_in, x, name="srresnet")
