"""PyTorch forms of the networks that ship only as ncnn files (RRDBNet, SRVGGNetCompact, SPAN).

The modules are spandrel's architectures (MIT) with each file's weights put into their state dicts, so
PyTorch can run what the Keras models of ``core.models.ncnn_graph`` run. The Keras graph follows whatever
the file says; a fixed architecture only equals the file when the file has exactly its layers. So every
Convolution and PReLU is matched against the module's own calls in forward order (kind, shape, padding,
fused activation), and every other layer against the architecture's list of them: a different file
raises ``ValueError`` naming it instead of computing something else.

Input: NCHW float32 RGB in [0, 1]; output: NCHW at the native scale, not clipped. The modules also run in
float16 and bfloat16 (``module.to(dtype)`` and an input of that dtype).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SPAN.__arch.span import Conv3XC
from torch import nn

from core.models import ncnn

RRDB_BLOCKS = 23
RRDB_SCALE = 2 * 2  # two nearest 2x enlargements, each followed by a convolution
COMPACT_FEATURES, COMPACT_CONVOLUTIONS, COMPACT_SCALE = 64, 16, 4
SPAN_FEATURES, SPAN_BLOCKS = 48, 6
RGB = 3
# ncnn's fused activation (Convolution parameters 9 and 10).
NO_ACTIVATION, LEAKY_RELU = (0, ()), 2
# Convolution parameters that the comparison with a torch Conv2d covers; any other one (asymmetric kernels
# or padding, a pad value) would change the result.
CONVOLUTION_PARAMS = {0, 1, 2, 3, 4, 5, 6, 9, 10}
# The side of the input run once to record the order in which a module calls its layers: one pixel, as its
# weights are still random then, and over a few layers random weights can drive activations to subnormal
# floats, which the CPU computes a hundred times slower.
TRACE_SIDE = 1

Params = tuple[tuple[int, ncnn.ParamValue], ...]
Activation = tuple[int, tuple[float, ...]]  # ncnn's activation type and its parameters
Pair = tuple[int, int]
ConvolutionForm = tuple[Pair, Pair, Pair, Pair, bool, Activation]  # kernel, dilation, stride, pad, bias


def load_esrgan(stem: Path) -> nn.Module:
    """realsr and realesrgan (RRDBNet, 23 blocks, 4x) on PyTorch: their Keras model's function, from the same file."""
    graph, weights = ncnn.load(stem)
    _check_other_layers(graph, _rrdbnet_layers(), stem)
    return _with_weights(ESRGAN(num_blocks=RRDB_BLOCKS, scale=RRDB_SCALE), graph, weights, stem)


def load_compact(stem: Path) -> nn.Module:
    """anime (SRVGGNetCompact, 4x) on PyTorch; like the file, it adds the input's nearest enlargement to its output."""
    graph, weights = ncnn.load(stem)
    _check_other_layers(graph, _compact_layers(), stem)
    model = Compact(num_in_ch=RGB, num_out_ch=RGB, num_feat=COMPACT_FEATURES, num_conv=COMPACT_CONVOLUTIONS,
                    upscale=COMPACT_SCALE, act_type="prelu")
    return _with_weights(model, graph, weights, stem)


def load_span(stem: Path) -> nn.Module:
    """span (SPAN, 48 channels, at the file's 2x or 4x) on PyTorch; any input size, as every layer keeps the size.

    Like the file, it subtracts the file's mean colour and scales by 255, and adds nothing back: the output
    is already RGB in [0, 1] up to overshoot.
    """
    graph, weights = ncnn.load(stem)
    scale = _span_scale(graph, stem)
    _check_other_layers(graph, _span_layers(scale), stem)
    model = SPAN(num_in_ch=RGB, num_out_ch=RGB, feature_channels=SPAN_FEATURES, upscale=scale,
                 rgb_mean=_span_mean(graph, weights, stem))
    return _with_weights(_fused(model), graph, weights, stem)


# The loader of each architecture the registry names for a network shipped as ncnn files.
LOADERS = {"esrgan": load_esrgan, "compact": load_compact, "span": load_span}


class FusedConv3XC(nn.Module):
    """SPAN's Conv3XC as exported: its fused 3x3 convolution only.

    spandrel's Conv3XC rebuilds ``eval_conv`` from its training branches on every eval-mode call; the file
    holds only the fused kernel, so those branches would overwrite it. SPAN builds every Conv3XC without its
    optional ReLU, so the fused convolution is the whole function.
    """

    def __init__(self, eval_conv: nn.Conv2d) -> None:
        super().__init__()
        self.eval_conv = eval_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


def _fused(model: nn.Module) -> nn.Module:
    """The model with each Conv3XC replaced by its fused convolution (state-dict keys stay ``*.eval_conv.*``)."""
    for name, child in model.named_children():
        if isinstance(child, Conv3XC):
            setattr(model, name, FusedConv3XC(child.eval_conv))
        else:
            _fused(child)
    return model


def _span_scale(graph: ncnn.Graph, stem: Path) -> int:
    shuffles = graph.of_type("PixelShuffle")
    if len(shuffles) != 1:
        raise ValueError(f"{stem.name}: SPAN has one PixelShuffle layer, the file has {len(shuffles)}")
    return int(shuffles[0].param(0, 1))


def _span_mean(graph: ncnn.Graph, weights: dict[str, ncnn.Weights], stem: Path) -> tuple[float, ...]:
    """The mean colour the file subtracts from its input (spandrel's default is the same DIV2K mean)."""
    constants = graph.of_type("MemoryData")
    if len(constants) != 1 or weights[constants[0].name].values.shape != (1, 1, RGB):
        raise ValueError(f"{stem.name}: SPAN subtracts one mean colour; the file's constants are "
                         f"{[weights[layer.name].values.shape for layer in constants]}")
    return tuple(float(value) for value in weights[constants[0].name].values.ravel())


# --- the layers besides Convolution and PReLU, as (type, parameters) -> count ----------------------------

def _rrdbnet_layers() -> Counter:
    dense_blocks = 3 * RRDB_BLOCKS
    return Counter({
        ("Input", ()): 1,
        ("Concat", ()): 4 * dense_blocks,  # the inputs of convolutions 2 to 5 of each dense block
        # 0.2 * dense block + input: each dense block's residual and each RRDB's.
        ("Eltwise", ((0, 1), (1, (0.2, 1.0)))): dense_blocks + RRDB_BLOCKS,
        ("BinaryOp", ()): 1,  # the trunk's shortcut
        ("Interp", ((0, 1), (1, 2.0), (2, 2.0))): 2,  # nearest, 2x
    })


def _compact_layers() -> Counter:
    factor = float(COMPACT_SCALE)
    return Counter({
        ("Input", ()): 1,
        ("PixelShuffle", ((0, COMPACT_SCALE),)): 1,
        ("Interp", ((0, 1), (1, factor), (2, factor))): 1,  # the input's nearest enlargement
        ("BinaryOp", ()): 1,  # added to the network's output
    })


def _span_layers(scale: int) -> Counter:
    return Counter({
        ("Input", ()): 1,
        ("MemoryData", ((0, 1), (1, 1), (2, RGB))): 1,
        ("BinaryOp", ((0, 1),)): 1,  # input - mean
        ("BinaryOp", ((0, 2), (1, 1), (2, 255.0))): 1,  # spandrel's img_range
        # Per block: SiLU after two of its convolutions; attention (out3 + x) * (sigmoid(out3) - 0.5).
        ("Swish", ()): 2 * SPAN_BLOCKS,
        ("Sigmoid", ()): SPAN_BLOCKS,
        ("BinaryOp", ((0, 1), (1, 1), (2, 0.5))): SPAN_BLOCKS,
        ("BinaryOp", ()): SPAN_BLOCKS,
        ("BinaryOp", ((0, 2),)): SPAN_BLOCKS,
        ("Concat", ()): 1,
        ("PixelShuffle", ((0, scale),)): 1,
    })


def _check_other_layers(graph: ncnn.Graph, expected: Counter, stem: Path) -> None:
    """The file's layers other than the weighted ones and Split (a blob used twice) are exactly ``expected``."""
    found = Counter((layer.type, _params(layer)) for layer in graph.layers
                    if layer.type not in {"Convolution", "PReLU", "Split"})
    if found != expected:
        raise ValueError(f"{stem.name}: layers not of this architecture: {dict(found - expected)}; "
                         f"missing: {dict(expected - found)}")


def _params(layer: ncnn.Layer) -> Params:
    return tuple(sorted(layer.params.items()))


# --- weights ----------------------------------------------------------------------------------------------

def _with_weights(model: nn.Module, graph: ncnn.Graph, weights: dict[str, ncnn.Weights], stem: Path) -> nn.Module:
    """``model`` holding the file's weights: its n-th Convolution or PReLU call takes the file's n-th such layer."""
    calls = _weighted_calls(model)
    layers = [layer for layer in graph.layers if layer.type in {"Convolution", "PReLU"}]
    if len(layers) != len(calls):
        raise ValueError(f"{stem.name}: {len(layers)} Convolution and PReLU layers, "
                         f"{type(model).__name__} calls {len(calls)}")
    state: dict[str, torch.Tensor] = {}
    for layer, (path, module, activation) in zip(layers, calls):
        state.update(_tensors(layer, weights[layer.name], path, module, activation, stem))
    model.load_state_dict(state)
    return model.float().eval().requires_grad_(False)


def _weighted_calls(model: nn.Module) -> list[tuple[str, nn.Module, Activation]]:
    """(path, module, activation ncnn would fuse into it) of each Conv2d and PReLU call, in forward order.

    Forward order is not registration order (SPAN registers ``conv_cat`` before ``conv_2`` but calls it
    after), so one small input is run and the calls are recorded.
    """
    paths = {module: path for path, module in model.named_modules()}
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [module.register_forward_hook(lambda module, inputs, output: calls.append((module, inputs[0], output)))
             for module in paths if isinstance(module, (nn.Conv2d, nn.PReLU, nn.LeakyReLU))]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, RGB, TRACE_SIDE, TRACE_SIDE))
    finally:
        for hook in hooks:
            hook.remove()
    weighted = []
    for (module, _, output), following in zip(calls, [*calls[1:], None]):
        if isinstance(module, nn.LeakyReLU):
            continue
        applies_to_output = following is not None and isinstance(following[0], nn.LeakyReLU) \
            and following[1] is output
        activation = (LEAKY_RELU, (following[0].negative_slope,)) if applies_to_output else NO_ACTIVATION
        weighted.append((paths[module], module, activation))
    return weighted


def _tensors(layer: ncnn.Layer, weights: ncnn.Weights, path: str, module: nn.Module,
             activation: Activation, stem: Path) -> dict[str, torch.Tensor]:
    """The state-dict entries of ``module`` from one ncnn layer, which must have the module's form and shapes."""
    where = f"{stem.name}: layer {layer.name} for {path}"
    if isinstance(module, nn.PReLU) and layer.type == "PReLU":
        return {f"{path}.weight": _checked(weights.values, module.weight.shape, where)}
    if not (isinstance(module, nn.Conv2d) and layer.type == "Convolution"):
        raise ValueError(f"{where}: a {layer.type} layer where the module has {type(module).__name__}")
    unknown = set(layer.params) - CONVOLUTION_PARAMS
    if unknown:
        raise ValueError(f"{where}: Convolution parameters {sorted(unknown)} are not supported")
    if _ncnn_form(layer) != _torch_form(module, activation):
        raise ValueError(f"{where}: (kernel, dilation, stride, pad, bias, activation) "
                         f"{_ncnn_form(layer)} where the module has {_torch_form(module, activation)}")
    # ncnn's reader gives Keras' (kh, kw, in, out); torch wants (out, in, kh, kw).
    return {f"{path}.weight": _checked(weights.values.transpose(3, 2, 0, 1), module.weight.shape, where),
            f"{path}.bias": _checked(weights.bias, module.bias.shape, where)}


def _ncnn_form(layer: ncnn.Layer) -> ConvolutionForm:
    kernel, dilation, stride, pad = (int(layer.param(key, default))
                                     for key, default in ((1, 0), (2, 1), (3, 1), (4, 0)))
    activation = (int(layer.param(9, 0)), tuple(layer.param(10, ())))
    return (kernel, kernel), (dilation, dilation), (stride, stride), (pad, pad), bool(layer.param(5, 0)), activation


def _torch_form(conv: nn.Conv2d, activation: Activation) -> ConvolutionForm:
    return conv.kernel_size, conv.dilation, conv.stride, conv.padding, conv.bias is not None, activation


def _checked(values: np.ndarray, shape: torch.Size, where: str) -> torch.Tensor:
    if values.shape != shape:
        raise ValueError(f"{where}: weights of shape {values.shape} where the module has {tuple(shape)}")
    return torch.from_numpy(np.ascontiguousarray(values))
