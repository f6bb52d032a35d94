"""Reader for ncnn model files (``.param`` graph text and ``.bin`` weights) into numpy.

Only the layer types and storage that the served files use are understood
(the RRDBNet, SPAN, SRVGGNetCompact and Real-CUGAN graphs); anything else raises
``ValueError`` naming the file and the layer, so a changed file fails loudly
at start-up instead of computing something else.

Format facts (ncnn's own writer, ``ncnn2mem``/``onnx2ncnn``):

* ``.param``: line 1 the magic ``7767517``; line 2 ``layer_count blob_count``;
  then one line per layer: ``Type name n_in n_out in... out... key=value...``.
  A key ``-233NN`` holds an array for parameter ``NN``: ``count,v1,v2,...``.
* ``.bin``: no header, each layer's arrays in layer order. A kernel or matrix
  starts with a 4-byte tag: ``0x01306B47`` means fp16 values follow, padded
  to 4 bytes; four zero bytes mean fp32 follows. Biases, PReLU slopes and
  MemoryData constants are untagged fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = "7767517"
FP16_TAG = 0x01306B47
FP32_TAG = 0
ARRAY_KEY_OFFSET = -23300

ParamValue = int | float | tuple[float, ...]


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def param(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)


@dataclass(frozen=True)
class Weights:
    """One layer's arrays, float32, in Keras (channels-last) layout.

    ``values`` is a Convolution's kernel (kh, kw, in, out), a Deconvolution's
    (kh, kw, out, in), an InnerProduct's matrix (in, out), PReLU's slopes (C,)
    or MemoryData's constant (h, w, c).
    """

    values: np.ndarray
    bias: np.ndarray | None  # (out,)


@dataclass(frozen=True)
class Graph:
    layers: tuple[Layer, ...]
    blob_count: int

    def of_type(self, layer_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.type == layer_type]


def parse_param(text: str, source: str = ".param") -> Graph:
    """The layers of an ncnn ``.param`` text, checked against its declared counts."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [MAGIC]:
        raise ValueError(f"{source}: not an ncnn param file (first line must be {MAGIC})")
    layer_count, blob_count = (int(value) for value in lines[1])
    layers = tuple(_parse_layer(tokens, source) for tokens in lines[2:])
    if len(layers) != layer_count:
        raise ValueError(f"{source}: header declares {layer_count} layers, file has {len(layers)}")
    return Graph(layers, blob_count)


def _parse_layer(tokens: list[str], source: str) -> Layer:
    layer_type, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
    blobs_end = 4 + n_in + n_out
    inputs, outputs = tuple(tokens[4:4 + n_in]), tuple(tokens[4 + n_in:blobs_end])
    params: dict[int, ParamValue] = {}
    for item in tokens[blobs_end:]:
        key_text, _, value_text = item.partition("=")
        key = int(key_text)
        if key <= ARRAY_KEY_OFFSET:
            count, *values = value_text.split(",")
            if len(values) != int(count):
                raise ValueError(f"{source}: layer {name} array {key} declares {count} values, has {len(values)}")
            params[ARRAY_KEY_OFFSET - key] = tuple(float(value) for value in values)
        else:
            params[key] = _number(value_text)
    return Layer(layer_type, name, inputs, outputs, params)


def _number(text: str) -> int | float:
    return float(text) if any(mark in text for mark in ".eE") else int(text)


# Layer types that own no bytes in the .bin file.
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "Interp", "BinaryOp", "Swish", "Sigmoid",
                        "PixelShuffle", "Crop", "Pooling"})


def read_weights(graph: Graph, data: bytes, source: str = ".bin") -> dict[str, Weights]:
    """Each weighted layer's arrays by layer name; the file must be consumed exactly."""
    weights: dict[str, Weights] = {}
    reader = _Reader(data, source)
    for layer in graph.layers:
        if layer.type in WEIGHTLESS:
            continue
        read = READERS.get(layer.type)
        if read is None:
            raise ValueError(f"{source}: layer {layer.name} of type {layer.type} is not supported")
        weights[layer.name] = read(layer, reader)
    if reader.offset != len(data):
        raise ValueError(f"{source}: {len(data) - reader.offset} bytes left over after the last layer")
    return weights


class _Reader:
    """ncnn's ModelBin: arrays read one after another, each raw fp32 or behind a storage tag."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source, self.offset = data, source, 0

    def raw(self, count: int, layer: Layer) -> np.ndarray:
        """``count`` untagged fp32 values (ncnn's type-1 load: biases, slopes, constants)."""
        return np.frombuffer(self._take(count * 4, layer), "<f4").copy()

    def tagged(self, count: int, layer: Layer) -> np.ndarray:
        """``count`` values behind a 4-byte tag (ncnn's type-0 load: kernels), as float32."""
        raw_tag = self._take(4, layer)
        tag = int(np.frombuffer(raw_tag, "<u4")[0])
        if tag == FP16_TAG:
            values = np.frombuffer(self._take(count * 2, layer), "<f2").astype(np.float32)
            self._take(-count * 2 % 4, layer)  # fp16 arrays are padded to 4 bytes
            return values
        if tag == FP32_TAG:
            return self.raw(count, layer)
        raise ValueError(f"{self.source}: layer {layer.name} weights have storage tag {tag:#010x} "
                         f"at byte {self.offset - 4}; only fp16 ({FP16_TAG:#010x}) and fp32 (0) are supported")

    def _take(self, size: int, layer: Layer) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.source}: file ends inside the weights of layer {layer.name}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk


def _kernel(layer: Layer, reader: _Reader) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """A (de)convolution's weights in ncnn's (out, in, kh, kw) order, its bias, in channels and kernel side."""
    out_channels, kernel_size, count = int(layer.param(0, 0)), int(layer.param(1, 0)), int(layer.param(6, 0))
    in_channels, remainder = divmod(count, max(1, out_channels * kernel_size * kernel_size))
    if remainder or in_channels == 0:
        raise ValueError(f"{reader.source}: layer {layer.name} weight count {count} does not fit "
                         f"{out_channels}x?x{kernel_size}x{kernel_size}")
    kernel = reader.tagged(count, layer).reshape(out_channels, in_channels, kernel_size, kernel_size)
    bias = reader.raw(out_channels, layer) if int(layer.param(5, 0)) else None
    return kernel, bias, in_channels, kernel_size


def _convolution(layer: Layer, reader: _Reader) -> Weights:
    kernel, bias, _, _ = _kernel(layer, reader)
    # Keras wants (h, w, in, out).
    return Weights(np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), bias)


def _deconvolution(layer: Layer, reader: _Reader) -> Weights:
    kernel, bias, _, _ = _kernel(layer, reader)
    # ncnn scatters input (i, j) to output (i * stride + y, j * stride + x) with weight [out, in, y, x],
    # as TensorFlow's transposed convolution does with its kernel (h, w, out, in).
    return Weights(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)), bias)


def _inner_product(layer: Layer, reader: _Reader) -> Weights:
    out_features, count = int(layer.param(0, 0)), int(layer.param(2, 0))
    in_features, remainder = divmod(count, max(1, out_features))
    if remainder or in_features == 0:
        raise ValueError(f"{reader.source}: layer {layer.name} weight count {count} does not fit {out_features} outputs")
    matrix = reader.tagged(count, layer).reshape(out_features, in_features)
    bias = reader.raw(out_features, layer) if int(layer.param(1, 0)) else None
    return Weights(np.ascontiguousarray(matrix.T), bias)


def _prelu(layer: Layer, reader: _Reader) -> Weights:
    return Weights(reader.raw(int(layer.param(0, 1)), layer), None)


def _memory_data(layer: Layer, reader: _Reader) -> Weights:
    width, height, channels = (int(layer.param(key, 0)) for key in (0, 1, 2))
    if not (width and height and channels):
        raise ValueError(f"{reader.source}: layer {layer.name}: only 3-dimensional MemoryData is supported")
    values = reader.raw(width * height * channels, layer).reshape(channels, height, width)
    return Weights(np.ascontiguousarray(values.transpose(1, 2, 0)), None)


READERS = {
    "Convolution": _convolution,
    "Deconvolution": _deconvolution,
    "InnerProduct": _inner_product,
    "PReLU": _prelu,
    "MemoryData": _memory_data,
}


def load(stem: Path) -> tuple[Graph, dict[str, Weights]]:
    """Read ``stem.param`` and ``stem.bin``."""
    param_path, bin_path = stem.with_name(stem.name + ".param"), stem.with_name(stem.name + ".bin")
    graph = parse_param(param_path.read_text(), param_path.name)
    return graph, read_weights(graph, bin_path.read_bytes(), bin_path.name)
