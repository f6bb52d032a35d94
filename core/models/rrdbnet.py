"""ESRGAN's RRDBNet built as an ordinary Keras 3 model from its ncnn files.

The ``realsr`` and ``realesrgan`` weights ship only in ncnn format. Rather
than hard-coding the 23-block topology, the Keras graph follows the
``.param`` file layer by layer, so the model is exactly what ncnn would run;
ncnn itself is not needed at run time.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import keras
import numpy as np

from core.models import ncnn

# ncnn Convolution parameter 9 (activation type) value for LeakyReLU.
LEAKY_RELU = 2
# ncnn Eltwise operation 1 is a (weighted) sum; BinaryOp 0 is add; Interp 1 is nearest.
ELTWISE_SUM = 1
BINARY_ADD = 0
INTERP_NEAREST = 1
# Convolution parameters understood: out channels, kernel, dilation, stride, pad, bias, weight count,
# activation type and its parameters. Others (separate pad sides, int8 scales...) change the result.
CONVOLUTION_PARAMS = frozenset({0, 1, 2, 3, 4, 5, 6, 9, 10})


class WeightedSum(keras.layers.Layer):
    """sum_i coefficients[i] * inputs[i] (ncnn Eltwise SUM with coefficients)."""

    def __init__(self, coefficients: tuple[float, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.coefficients = tuple(float(c) for c in coefficients)

    def call(self, inputs):
        total = None
        for coefficient, tensor in zip(self.coefficients, inputs):
            term = tensor if coefficient == 1.0 else tensor * coefficient
            total = term if total is None else total + term
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "coefficients": self.coefficients}


class Preset(keras.initializers.Initializer):
    """Initialises one variable with known values.

    Creating each variable once with its real weights is much faster than random
    (or zero) initialisation followed by ``set_weights``. The values are handed
    over once and then dropped, so the model holds no second copy of its weights.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values: np.ndarray | None = values

    def __call__(self, shape, dtype=None):
        values, self.values = self.values, None
        if values is None:
            raise RuntimeError("a Preset initialiser serves one variable once")
        if tuple(shape) != values.shape:
            raise ValueError(f"weights of shape {values.shape} for a variable of shape {tuple(shape)}")
        return values


def build_from_ncnn(stem: Path) -> keras.Model:
    """The Keras model of ``stem.param`` with the weights of ``stem.bin``.

    Input: RGB in [0, 1], shape (N, H, W, 3) for any H, W. Output: (N, 4H, 4W, 3),
    RGB in [0, 1] up to overshoot (the caller clips).
    """
    graph, weights = ncnn.load(stem)
    return build_graph(graph, weights, stem.name)


def build_graph(graph: ncnn.Graph, weights: dict[str, ncnn.Convolution], name: str) -> keras.Model:
    """Follow the ncnn layers in file order, mapping each blob name to its Keras tensor."""
    blobs: dict[str, keras.KerasTensor] = {}
    inputs = []
    for layer in graph.layers:
        if layer.type == "Input":
            tensor = keras.Input(shape=(None, None, 3), name="rgb")
            inputs.append(tensor)
            outputs = [tensor]
        elif layer.type == "Split":
            outputs = [blobs[layer.inputs[0]]] * len(layer.outputs)
        else:
            outputs = [_apply(layer, [blobs[blob] for blob in layer.inputs], weights)]
        blobs.update(zip(layer.outputs, outputs))
    if len(inputs) != 1 or "output" not in blobs:
        raise ValueError(f"{name}: expected one Input layer and a blob named 'output'")
    return keras.Model(inputs[0], blobs["output"], name=name.lower())


def _apply(layer: ncnn.Layer, tensors: list[keras.KerasTensor],
           weights: dict[str, ncnn.Convolution]) -> keras.KerasTensor:
    if layer.type == "Convolution":
        return _convolution(layer, tensors[0], weights[layer.name])
    if layer.type == "Concat" and layer.param(0, 0) == 0:
        # ncnn's axis 0 is channels (CHW without batch): the last axis in NHWC.
        return keras.layers.Concatenate(axis=-1, name=layer.name)(tensors)
    if layer.type == "Eltwise" and layer.param(0, 0) == ELTWISE_SUM:
        coefficients = layer.param(1, (1.0,) * len(tensors))
        if len(coefficients) != len(tensors):
            raise ValueError(f"layer {layer.name}: {len(coefficients)} coefficients for {len(tensors)} inputs")
        return WeightedSum(coefficients, name=layer.name)(tensors)
    if layer.type == "BinaryOp" and layer.param(0, 0) == BINARY_ADD:
        return keras.layers.Add(name=layer.name)(tensors)
    if layer.type == "Interp" and _is_nearest_x2(layer):
        return keras.layers.UpSampling2D(2, interpolation="nearest", name=layer.name)(tensors[0])
    raise ValueError(f"layer {layer.name}: {layer.type} with parameters {layer.params} is not supported")


def _is_nearest_x2(layer: ncnn.Layer) -> bool:
    return layer.param(0, 0) == INTERP_NEAREST and layer.param(1, 1.0) == 2.0 and layer.param(2, 1.0) == 2.0


def _convolution(layer: ncnn.Layer, tensor: keras.KerasTensor, weights: ncnn.Convolution) -> keras.KerasTensor:
    unknown = set(layer.params) - CONVOLUTION_PARAMS
    if unknown:
        raise ValueError(f"layer {layer.name}: convolution parameters {sorted(unknown)} are not supported")
    kernel = int(layer.param(1, 0))
    plain = all(layer.param(key, 1) == 1 for key in (2, 3))  # dilation, stride
    if not plain or layer.param(4, 0) != (kernel - 1) // 2 or kernel % 2 == 0:
        raise ValueError(f"layer {layer.name}: only stride-1 'same' convolutions are supported, got {layer.params}")
    return keras.layers.Conv2D(
        int(layer.param(0, 0)), kernel, padding="same", activation=_activation(layer),
        use_bias=weights.bias is not None, kernel_initializer=Preset(weights.kernel),
        bias_initializer=Preset(weights.bias) if weights.bias is not None else "zeros", name=layer.name,
    )(tensor)


def _activation(layer: ncnn.Layer):
    """The activation ncnn fuses into a convolution (parameter 9), as a Conv2D activation."""
    activation = layer.param(9, 0)
    if activation == 0:
        return None
    if activation == LEAKY_RELU:
        (slope,) = layer.param(10, (0.0,))
        return partial(keras.activations.leaky_relu, negative_slope=slope)
    raise ValueError(f"layer {layer.name}: activation type {activation} is not supported")
