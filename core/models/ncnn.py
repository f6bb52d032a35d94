"""Reader for ncnn model files (``.param`` graph text and ``.bin`` weights) into numpy.

Only what the served RRDBNet files use is understood; anything else raises
``ValueError`` naming the file and the layer, so a changed file fails loudly
at start-up instead of computing something else.

Format facts (ncnn's own writer, ``ncnn2mem``/``onnx2ncnn``):

* ``.param``: line 1 the magic ``7767517``; line 2 ``layer_count blob_count``;
  then one line per layer: ``Type name n_in n_out in... out... key=value...``.
  A key ``-233NN`` holds an array for parameter ``NN``: ``count,v1,v2,...``.
* ``.bin``: no header, each layer's weights in layer order. A convolution's
  kernel starts with a 4-byte tag; ``0x01306B47`` means fp16 values follow,
  padded to 4 bytes. The bias follows as untagged fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = "7767517"
FP16_TAG = 0x01306B47
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
class Convolution:
    """One convolution's weights, in Keras layout."""

    kernel: np.ndarray  # (kh, kw, in, out) float32
    bias: np.ndarray | None  # (out,) float32


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
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "Interp", "BinaryOp"})


def read_weights(graph: Graph, data: bytes, source: str = ".bin") -> dict[str, Convolution]:
    """Each convolution's kernel and bias by layer name; the file must be consumed exactly."""
    weights: dict[str, Convolution] = {}
    offset = 0
    for layer in graph.layers:
        if layer.type in WEIGHTLESS:
            continue
        if layer.type != "Convolution":
            raise ValueError(f"{source}: layer {layer.name} of type {layer.type} is not supported")
        weights[layer.name], offset = _read_convolution(layer, data, offset, source)
    if offset != len(data):
        raise ValueError(f"{source}: {len(data) - offset} bytes left over after the last layer")
    return weights


def _read_convolution(layer: Layer, data: bytes, offset: int, source: str) -> tuple[Convolution, int]:
    out_channels = int(layer.param(0, 0))
    kernel_size = int(layer.param(1, 0))
    count = int(layer.param(6, 0))
    in_channels, remainder = divmod(count, out_channels * kernel_size * kernel_size)
    if remainder or in_channels == 0:
        raise ValueError(f"{source}: layer {layer.name} weight count {count} does not fit {out_channels}x?x{kernel_size}x{kernel_size}")
    tag = int(np.frombuffer(data, "<u4", 1, offset)[0]) if offset + 4 <= len(data) else None
    if tag != FP16_TAG:
        raise ValueError(f"{source}: layer {layer.name} weights are not tagged fp16 (tag {tag!r} at byte {offset})")
    offset += 4
    raw = _take(data, offset, count * 2, layer, source)
    kernel = np.frombuffer(raw, "<f2").astype(np.float32)
    offset += (count * 2 + 3) // 4 * 4
    # ncnn stores PyTorch's (out, in, h, w); Keras wants (h, w, in, out).
    kernel = kernel.reshape(out_channels, in_channels, kernel_size, kernel_size).transpose(2, 3, 1, 0)
    bias = None
    if int(layer.param(5, 0)):
        bias = np.frombuffer(_take(data, offset, out_channels * 4, layer, source), "<f4").copy()
        offset += out_channels * 4
    return Convolution(np.ascontiguousarray(kernel), bias), offset


def _take(data: bytes, offset: int, size: int, layer: Layer, source: str) -> bytes:
    if offset + size > len(data):
        raise ValueError(f"{source}: file ends inside the weights of layer {layer.name}")
    return data[offset:offset + size]


def load(stem: Path) -> tuple[Graph, dict[str, Convolution]]:
    """Read ``stem.param`` and ``stem.bin``."""
    param_path, bin_path = stem.with_name(stem.name + ".param"), stem.with_name(stem.name + ".bin")
    graph = parse_param(param_path.read_text(), param_path.name)
    return graph, read_weights(graph, bin_path.read_bytes(), bin_path.name)
