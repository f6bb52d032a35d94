"""Any ncnn graph of the served kinds built as an ordinary Keras 3 model.

Several models ship only in ncnn format (``realsr``, ``realesrgan``: RRDBNet;
``span``: SPAN; ``anime``: SRVGGNetCompact; ``realcugan``: Real-CUGAN's UNets).
Rather than hard-coding each topology, the Keras graph follows the ``.param``
file layer by layer, so the model is exactly what ncnn would run; ncnn itself
is not needed at run time. A layer type or option not listed here raises
``ValueError`` naming the layer, so an unfamiliar file fails at load time
instead of computing something else.

ncnn blobs are CHW without a batch; here they are NHWC, so ncnn's channel axis
is the last one, and a 1-D blob (a global pooling's channel vector) is held as
(N, 1, 1, C), which broadcasts against images as ncnn's BinaryOp does.
"""
from __future__ import annotations

import operator
import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.models import ncnn

# ncnn's fused activation (parameter 9 of Convolution, Deconvolution, InnerProduct).
RELU, LEAKY_RELU, SIGMOID = 1, 2, 4
# ncnn Eltwise operation 1 is a (weighted) sum; Interp 1 is nearest; Pooling 0 is max, 1 is average.
ELTWISE_SUM = 1
INTERP_NEAREST = 1
POOL_MAX, POOL_AVERAGE = 0, 1
# ncnn BinaryOp operation codes (parameter 0) understood here.
BINARY_OPERATIONS = {0: operator.add, 1: operator.sub, 2: operator.mul}
# Parameters understood per layer type; any other one would change the result, so it is refused.
KNOWN_PARAMS = {
    "Convolution": {0, 1, 2, 3, 4, 5, 6, 9, 10},  # out, kernel, dilation, stride, pad, bias, count, activation
    "Deconvolution": {0, 1, 2, 3, 4, 5, 6, 9, 10},
    "InnerProduct": {0, 1, 2, 9, 10},  # out, bias, count, activation
    "Pooling": {0, 4},  # type, global
    "Interp": {0, 1, 2},  # type, height scale, width scale
    "Crop": {9, 10, 11},  # starts, ends, axes
    "PixelShuffle": {0, 1},  # factor, mode
    "BinaryOp": {0, 1, 2},  # operation, with scalar, scalar
    "PReLU": {0},
    "MemoryData": {0, 1, 2},
}
# Crop ends at or past this mean "to the end" (ncnn writes INT_MAX-like values).
CROP_TO_END = 1 << 30

Blob = keras.KerasTensor | np.ndarray  # MemoryData blobs are constants until an operation takes them in


class WeightedSum(keras.layers.Layer):
    """sum_i coefficients[i] * inputs[i] (ncnn Eltwise SUM with coefficients)."""

    def __init__(self, coefficients: tuple[float, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.coefficients = tuple(float(c) for c in coefficients)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        total = None
        for coefficient, tensor in zip(self.coefficients, inputs):
            term = tensor if coefficient == 1.0 else tensor * coefficient
            total = term if total is None else total + term
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "coefficients": self.coefficients}


class Arithmetic(keras.layers.Layer):
    """ncnn BinaryOp on two tensors, or on a tensor and a scalar or a constant array (broadcast)."""

    def __init__(self, operation: int, scalar: float | None = None, constant: np.ndarray | None = None,
                 constant_first: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.operation, self.scalar, self.constant_first = operation, scalar, constant_first
        self._constant_values = constant

    def build(self, input_shape: tuple[int | None, ...] | list[tuple[int | None, ...]]) -> None:
        if self._constant_values is not None:
            values = self._constant_values[None]  # a batch axis, to broadcast
            self.constant = self.add_weight(shape=values.shape, initializer=Preset(values), trainable=False,
                                            name="constant")
            self._constant_values = None

    def call(self, inputs: tf.Tensor | list[tf.Tensor]) -> tf.Tensor:
        function = BINARY_OPERATIONS[self.operation]
        if isinstance(inputs, (list, tuple)):
            return function(inputs[0], inputs[1])
        other = self.scalar if self.scalar is not None else self.constant
        return function(other, inputs) if self.constant_first else function(inputs, other)


class Swish(keras.layers.Layer):
    """x * sigmoid(x), written out: Keras' silu carries a custom gradient whose intermediate tensors
    OpenVINO's conversion keeps as extra outputs of the graph."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs * keras.ops.sigmoid(inputs)


class TorchPixelShuffle(keras.layers.Layer):
    """Pixel shuffle in PyTorch's channel order (channel c * r * r + i * r + j -> pixel (i, j) of c)."""

    def __init__(self, factor: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        squared = self.factor * self.factor
        out_channels = inputs.shape[-1] // squared
        # TensorFlow's depth_to_space reads channel (i * r + j) * C + c for pixel (i, j) of channel c.
        order = [c * squared + k for k in range(squared) for c in range(out_channels)]
        return tf.nn.depth_to_space(tf.gather(inputs, order, axis=-1), self.factor)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


class Preset(keras.initializers.Initializer):
    """Initialises one variable with known values.

    Creating each variable once with its real weights is much faster than random
    (or zero) initialisation followed by ``set_weights``. The values are handed
    over once and then dropped, so the model holds no second copy of its weights.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values: np.ndarray | None = values

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None) -> np.ndarray:
        values, self.values = self.values, None
        if values is None:
            raise RuntimeError("a Preset initialiser serves one variable once")
        if tuple(shape) != values.shape:
            raise ValueError(f"weights of shape {values.shape} for a variable of shape {tuple(shape)}")
        return values


def build_from_ncnn(stem: Path) -> keras.Model:
    """The Keras model of ``stem.param`` with the weights of ``stem.bin``.

    Input: RGB in [0, 1], shape (N, H, W, 3). Output: (N, sH, sW, 3) for the
    file's scale s (fewer pixels where the graph crops its borders), RGB in
    [0, 1] up to overshoot (the caller clips).
    """
    graph, weights = ncnn.load(stem)
    return build_graph(graph, weights, stem.name)


def build_shared_statistics_pair(stem: Path) -> tuple[keras.Model, keras.Model]:
    """The two halves of a graph whose global poolings should see the whole image, not one tile.

    ``measure``: RGB -> the outputs of its global Pooling layers, in file order (each (N, 1, 1, C)).
    ``apply``: [RGB, *those vectors] -> the graph's output, each Pooling replaced by the given vector.
    ``apply`` holds every weight; ``measure`` a second copy of those before the last pooling.
    """
    graph, weights = ncnn.load(stem)
    return (build_graph(graph, weights, stem.name, pooling="outputs"),
            build_graph(graph, weights, stem.name, pooling="inputs"))


def plus_nearest_input(model: keras.Model, crop: int, factor: int) -> keras.Model:
    """The model's output plus its image input cut by ``crop`` on each side and enlarged ``factor`` times
    (nearest): Real-CUGAN's 4x graph computes that residual, its runner adds the input."""
    inputs = list(model.inputs)
    enlarged = keras.layers.UpSampling2D(factor, interpolation="nearest", name="nearest_input")(
        keras.layers.Cropping2D(crop, name="input_core")(inputs[0]))
    output = keras.layers.Add(name="plus_input")([model(inputs if len(inputs) > 1 else inputs[0]), enlarged])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], output, name=model.name)


def build_graph(graph: ncnn.Graph, weights: dict[str, ncnn.Weights], name: str,
                pooling: str = "computed") -> keras.Model:
    """Follow the ncnn layers in file order, mapping each blob name to its Keras tensor.

    ``pooling``: "computed" (the graph as it is), "outputs" (the global poolings' results are the
    model's outputs) or "inputs" (each global pooling's result is an extra model input instead).
    """
    blobs: dict[str, Blob] = {}
    inputs, pooled = [], []
    for layer in graph.layers:
        _check_params(layer)
        if layer.type == "Input":
            tensor = keras.Input(shape=(None, None, 3), name="rgb")
            inputs.append(tensor)
            outputs = [tensor]
        elif layer.type == "Split":
            outputs = [blobs[layer.inputs[0]]] * len(layer.outputs)
        elif layer.type == "MemoryData":
            outputs = [weights[layer.name].values]
        elif layer.type == "Pooling" and pooling == "inputs":
            channels = blobs[layer.inputs[0]].shape[-1]
            outputs = [keras.Input(shape=(1, 1, channels), name=_keras_name(layer.name))]
            pooled.append(outputs[0])
        else:
            keras_layer = replace(layer, name=_keras_name(layer.name))
            outputs = [_apply(keras_layer, [blobs[blob] for blob in layer.inputs], weights.get(layer.name))]
            if layer.type == "Pooling":
                pooled.append(outputs[0])
        blobs.update(zip(layer.outputs, outputs))
    consumed = {blob for layer in graph.layers for blob in layer.inputs}
    results = [blob for layer in graph.layers for blob in layer.outputs if blob not in consumed]
    if len(inputs) != 1 or len(results) != 1:
        raise ValueError(f"{name}: expected one Input layer and one output blob, found {len(inputs)} and {results}")
    if pooling == "outputs":
        if not pooled:
            raise ValueError(f"{name}: the graph has no global Pooling layer")
        return keras.Model(inputs[0], pooled, name=f"{name.lower()}_statistics")
    return keras.Model([inputs[0], *pooled] if pooled and pooling == "inputs" else inputs[0],
                       blobs[results[0]], name=name.lower())


def _keras_name(name: str) -> str:
    """An ncnn layer name as Keras accepts it (exporters write ONNX paths such as ``/block_1/Mul``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("_") or "layer"


def _check_params(layer: ncnn.Layer) -> None:
    unknown = set(layer.params) - KNOWN_PARAMS.get(layer.type, set(layer.params))
    if unknown:
        raise ValueError(f"layer {layer.name}: {layer.type} parameters {sorted(unknown)} are not supported")


def _apply(layer: ncnn.Layer, tensors: list[Blob], weights: ncnn.Weights | None) -> keras.KerasTensor:
    builder = BUILDERS.get(layer.type)
    if builder is None:
        raise ValueError(f"layer {layer.name}: {layer.type} with parameters {layer.params} is not supported")
    return builder(layer, tensors, weights)


def _convolution(layer: ncnn.Layer, tensors: list[Blob], weights: ncnn.Weights) -> keras.KerasTensor:
    kernel, dilation, stride, pad = (int(layer.param(key, default)) for key, default in ((1, 0), (2, 1), (3, 1), (4, 0)))
    tensor = tensors[0]
    if pad < 0 or (dilation > 1 and stride > 1):
        raise ValueError(f"layer {layer.name}: convolution with pad {pad}, dilation {dilation}, "
                         f"stride {stride} is not supported")
    if pad and stride == 1 and dilation * (kernel - 1) == 2 * pad:
        padding = "same"
    else:
        padding = "valid"
        if pad:
            tensor = keras.layers.ZeroPadding2D(pad, name=f"{layer.name}_pad")(tensor)
    return keras.layers.Conv2D(
        int(layer.param(0, 0)), kernel, strides=stride, dilation_rate=dilation, padding=padding,
        activation=_activation(layer), use_bias=weights.bias is not None,
        kernel_initializer=Preset(weights.values), bias_initializer=_bias(weights), name=layer.name,
    )(tensor)


def _deconvolution(layer: ncnn.Layer, tensors: list[Blob], weights: ncnn.Weights) -> keras.KerasTensor:
    kernel, dilation, stride, pad = (int(layer.param(key, default)) for key, default in ((1, 0), (2, 1), (3, 1), (4, 0)))
    if dilation != 1 or pad < 0 or kernel < stride:
        raise ValueError(f"layer {layer.name}: deconvolution with kernel {kernel}, dilation {dilation}, "
                         f"stride {stride}, pad {pad} is not supported")
    # ncnn's output is (n - 1) * stride + kernel, less pad on each side: a 'valid' transposed convolution, cropped.
    tensor = keras.layers.Conv2DTranspose(
        int(layer.param(0, 0)), kernel, strides=stride, padding="valid", activation=_activation(layer),
        use_bias=weights.bias is not None, kernel_initializer=Preset(weights.values),
        bias_initializer=_bias(weights), name=layer.name,
    )(tensors[0])
    return keras.layers.Cropping2D(pad, name=f"{layer.name}_crop")(tensor) if pad else tensor


def _inner_product(layer: ncnn.Layer, tensors: list[Blob], weights: ncnn.Weights) -> keras.KerasTensor:
    return keras.layers.Dense(
        int(layer.param(0, 0)), activation=_activation(layer), use_bias=weights.bias is not None,
        kernel_initializer=Preset(weights.values), bias_initializer=_bias(weights), name=layer.name,
    )(tensors[0])


def _bias(weights: ncnn.Weights):
    return Preset(weights.bias) if weights.bias is not None else "zeros"


def _activation(layer: ncnn.Layer):
    """The activation ncnn fuses into a layer (parameter 9), as a Keras activation."""
    activation = layer.param(9, 0)
    if activation == 0:
        return None
    if activation == RELU:
        return "relu"
    if activation == SIGMOID:
        return "sigmoid"
    if activation == LEAKY_RELU:
        (slope,) = layer.param(10, (0.0,))
        return partial(keras.activations.leaky_relu, negative_slope=slope)
    raise ValueError(f"layer {layer.name}: activation type {activation} is not supported")


def _prelu(layer: ncnn.Layer, tensors: list[Blob], weights: ncnn.Weights) -> keras.KerasTensor:
    slopes = weights.values
    shared_axes = [1, 2, 3] if slopes.size == 1 else [1, 2]
    return keras.layers.PReLU(shared_axes=shared_axes, alpha_initializer=Preset(slopes.reshape(1, 1, -1)),
                              name=layer.name)(tensors[0])


def _binary_op(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    operation = int(layer.param(0, 0))
    if operation not in BINARY_OPERATIONS:
        raise ValueError(f"layer {layer.name}: BinaryOp operation {operation} is not supported")
    if int(layer.param(1, 0)):
        return Arithmetic(operation, scalar=float(layer.param(2, 0.0)), name=layer.name)(tensors[0])
    first, second = tensors
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        constant_first = isinstance(first, np.ndarray)
        constant, tensor = (first, second) if constant_first else (second, first)
        return Arithmetic(operation, constant=constant, constant_first=constant_first, name=layer.name)(tensor)
    return Arithmetic(operation, name=layer.name)([first, second])


def _eltwise(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    if layer.param(0, 0) != ELTWISE_SUM:
        raise ValueError(f"layer {layer.name}: Eltwise operation {layer.param(0, 0)} is not supported")
    coefficients = layer.param(1, (1.0,) * len(tensors))
    if len(coefficients) != len(tensors):
        raise ValueError(f"layer {layer.name}: {len(coefficients)} coefficients for {len(tensors)} inputs")
    return WeightedSum(coefficients, name=layer.name)(tensors)


def _concat(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    if layer.param(0, 0) != 0:
        raise ValueError(f"layer {layer.name}: Concat on axis {layer.param(0, 0)} is not supported")
    # ncnn's axis 0 is channels (CHW without batch): the last axis in NHWC.
    return keras.layers.Concatenate(axis=-1, name=layer.name)(tensors)


def _interp(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    height_scale, width_scale = float(layer.param(1, 1.0)), float(layer.param(2, 1.0))
    if layer.param(0, 0) != INTERP_NEAREST or height_scale != width_scale or not height_scale.is_integer():
        raise ValueError(f"layer {layer.name}: only nearest Interp by a whole factor is supported, got {layer.params}")
    return keras.layers.UpSampling2D(int(height_scale), interpolation="nearest", name=layer.name)(tensors[0])


def _pixel_shuffle(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    if layer.param(1, 0) != 0:
        raise ValueError(f"layer {layer.name}: PixelShuffle mode {layer.param(1, 0)} is not supported")
    return TorchPixelShuffle(int(layer.param(0, 1)), name=layer.name)(tensors[0])


def _pooling(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    kind = layer.param(0, POOL_MAX)
    if not layer.param(4, 0) or kind not in (POOL_MAX, POOL_AVERAGE):
        raise ValueError(f"layer {layer.name}: only global max or average Pooling is supported, got {layer.params}")
    pool = keras.layers.GlobalAveragePooling2D if kind == POOL_AVERAGE else keras.layers.GlobalMaxPooling2D
    return pool(keepdims=True, name=layer.name)(tensors[0])


def _crop(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
    starts, ends, axes = (tuple(int(v) for v in layer.param(key, ())) for key in (9, 10, 11))
    cropping = {"h": (0, 0), "w": (0, 0)}
    for start, end, axis in zip(starts, ends, axes, strict=True):
        # ncnn axes of an image blob (C, H, W): 1 or -2 is H, 2 or -1 is W.
        side = {1: "h", -2: "h", 2: "w", -1: "w"}.get(axis)
        if side is None or start < 0 or not (end < 0 or end >= CROP_TO_END):
            raise ValueError(f"layer {layer.name}: Crop of axis {axis} from {start} to {end} is not supported")
        cropping[side] = (start, -end if end < 0 else 0)
    return keras.layers.Cropping2D((cropping["h"], cropping["w"]), name=layer.name)(tensors[0])


def _activation_layer(function: str):
    def build(layer: ncnn.Layer, tensors: list[Blob], weights: None) -> keras.KerasTensor:
        return keras.layers.Activation(function, name=layer.name)(tensors[0])
    return build


BUILDERS = {
    "Convolution": _convolution,
    "Deconvolution": _deconvolution,
    "InnerProduct": _inner_product,
    "PReLU": _prelu,
    "BinaryOp": _binary_op,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Interp": _interp,
    "PixelShuffle": _pixel_shuffle,
    "Pooling": _pooling,
    "Crop": _crop,
    "Swish": lambda layer, tensors, weights: Swish(name=layer.name)(tensors[0]),
    "Sigmoid": _activation_layer("sigmoid"),
}
