"""Each ncnn layer type the graph builder knows, in small graphs with random weights, against ncnn itself."""
from __future__ import annotations

import numpy as np
import pytest

from core.models import ncnn
from core.models.ncnn_graph import build_from_ncnn, build_graph
from tests.core.ncnn_reference import run_ncnn, write_model

# SPAN's layers: a MemoryData mean, BinaryOp with a constant, a scalar and two tensors, Swish, Sigmoid,
# Concat and PixelShuffle (PyTorch's channel order).
SPAN_LIKE = """7767517
16 19
Input in 0 1 data
MemoryData mean 0 1 mean 0=1 1=1 2=3
BinaryOp sub 2 1 data mean centred 0=1
BinaryOp scale 1 1 centred scaled 0=2 1=1 2=2.000000e+00
Convolution conv_a 1 1 scaled a 0=8 1=3 4=1 5=1 6=216
Split split_a 1 3 a a0 a1 a2
Swish swish 1 1 a0 b
Convolution conv_b 1 1 b c 0=8 1=3 4=1 5=1 6=576
Split split_c 1 2 c c0 c1
Sigmoid sigmoid 1 1 c0 d
BinaryOp half 1 1 d e 0=1 1=1 2=5.000000e-01
BinaryOp add 2 1 c1 a1 f
BinaryOp mul 2 1 f e g 0=2
Concat cat 2 1 a2 g h 0=0
Convolution conv_c 1 1 h i 0=12 1=1 5=1 6=192
PixelShuffle shuffle 1 1 i output 0=2
"""

# SRVGGNetCompact's layers: PReLU per channel, PixelShuffle by 4, nearest Interp by 4 and a residual add;
# the first kernel stored as fp32 behind a zero tag.
SRVGG_LIKE = """7767517
8 9
Input in 0 1 data
Split split 1 2 data d0 d1
Convolution conv_a 1 1 d0 a 0=8 1=3 4=1 5=1 6=216
PReLU prelu 1 1 a b 0=8
Convolution conv_b 1 1 b c 0=48 1=3 4=1 5=1 6=3456
PixelShuffle shuffle 1 1 c e 0=4
Interp up 1 1 d1 f 0=1 1=4.000000e+00 2=4.000000e+00
BinaryOp add 2 1 e f output
"""

# Real-CUGAN's layers: valid and strided convolutions, a squeeze-excitation block (global average Pooling,
# InnerProduct with ReLU and sigmoid, BinaryOp broadcasting a channel vector), Deconvolution with and
# without pad, and Crop of the borders.
CUGAN_LIKE = """7767517
14 16
Input in 0 1 in0
Convolution conv_a 1 1 in0 a 0=8 1=3 5=1 6=216 9=2 -23310=1,1.000000e-01
Split split_a 1 2 a a0 a1
Convolution down 1 1 a0 b 0=8 1=2 3=2 5=1 6=256 9=2 -23310=1,1.000000e-01
Split split_b 1 2 b b0 b1
Pooling gap 1 1 b0 g 0=1 4=1
InnerProduct fc1 1 1 g h 0=4 1=1 2=32 9=1
InnerProduct fc2 1 1 h k 0=8 1=1 2=32 9=4
BinaryOp se 2 1 b1 k m 0=2
Convolution conv_m 1 1 m n 0=8 1=3 5=1 6=576
Deconvolution up 1 1 n p 0=8 1=2 3=2 5=1 6=256 9=2 -23310=1,1.000000e-01
Crop crop 1 1 a1 q -23309=2,2,2 -23310=2,-2,-2 -23311=2,-2,-1
BinaryOp add 2 1 q p r
Deconvolution out 1 1 r out0 0=3 1=4 3=2 4=3 5=1 6=384
"""


@pytest.mark.parametrize("param_text, fp32_layers, output_shape", [
    (SPAN_LIKE, frozenset(), (40, 48, 3)),
    (SRVGG_LIKE, frozenset({"conv_a"}), (80, 96, 3)),
    (CUGAN_LIKE, frozenset(), (24, 32, 3)),
], ids=["span-like", "srvgg-like", "cugan-like"])
def test_each_layer_type_computes_what_ncnn_computes(tmp_path, param_text, fp32_layers, output_shape):
    rng = np.random.default_rng(11)
    path = tmp_path / "small"
    write_model(path, param_text, rng, fp32_layers)
    image = rng.random((20, 24, 3), dtype=np.float32)
    ours = np.asarray(build_from_ncnn(path)(image[None]))[0]
    reference = run_ncnn(path, image)
    assert ours.shape == reference.shape == output_shape
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-5)


def test_the_reader_takes_each_layers_arrays_in_keras_layout(tmp_path):
    path = tmp_path / "small"
    write_model(path, CUGAN_LIKE, np.random.default_rng(3))
    graph, weights = ncnn.load(path)
    assert set(weights) == {"conv_a", "down", "fc1", "fc2", "conv_m", "up", "out"}
    assert weights["fc1"].values.shape == (8, 4) and weights["fc1"].bias.shape == (4,)
    assert weights["out"].values.shape == (4, 4, 3, 8)  # (h, w, out, in) for a transposed convolution
    assert weights["down"].values.shape == (2, 2, 8, 8)


def test_an_unknown_storage_tag_is_refused(tmp_path):
    path = tmp_path / "small"
    write_model(path, SRVGG_LIKE, np.random.default_rng(3))
    data = bytes.fromhex("01020304") + path.with_name("small.bin").read_bytes()[4:]
    with pytest.raises(ValueError, match="layer conv_a weights have storage tag 0x04030201"):
        ncnn.read_weights(ncnn.parse_param(SRVGG_LIKE), data)


@pytest.mark.parametrize("line, message", [
    ("Interp up 1 1 data output 0=3 1=5.000000e-01 2=5.000000e-01", "only nearest Interp by a whole factor"),
    ("Pooling pool 1 1 data output 0=1", "only global max or average Pooling"),
    ("Crop crop 1 1 data output -23309=1,1 -23310=1,-1 -23311=1,0", "Crop of axis 0"),
    ("BinaryOp pow 1 1 data output 0=6 1=1 2=2.0", "BinaryOp operation 6"),
    ("PixelShuffle shuffle 1 1 data output 0=2 1=1", "PixelShuffle mode 1"),
    ("Convolution conv 1 1 data output 0=3 1=3 4=1 5=0 6=81 14=1", r"Convolution parameters \[14\]"),
])
def test_an_option_the_builder_does_not_know_is_refused(line, message):
    graph = ncnn.parse_param(f"7767517\n2 2\nInput in 0 1 data\n{line}\n")
    weights = {"conv": ncnn.Weights(np.zeros((3, 3, 3, 3), np.float32), None)}
    with pytest.raises(ValueError, match=message):
        build_graph(graph, weights, "small")
