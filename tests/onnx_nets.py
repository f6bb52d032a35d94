"""Small super-resolution networks written as ONNX files from numpy weights, and numpy's own result of each.

A convolution to ``3 * scale**2`` channels followed by DepthToSpace (PyTorch's PixelShuffle,
ONNX mode CRD): the output layer of ESPCN, SRResNet and SPAN. The numpy reference computes the
same arithmetic independently, so a served result can be checked value by value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The ONNX opset and IR version of a typical PyTorch export, well within what OpenVINO reads.
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class SubpixelNet:
    weight: np.ndarray  # (3 * scale**2, 3, k, k), PyTorch's order
    bias: np.ndarray  # (3 * scale**2,)
    scale: int

    @classmethod
    def random(cls, scale: int, kernel: int = 3, seed: int = 0) -> "SubpixelNet":
        """Weights that keep a [0, 1] image mostly in [0, 1]: the mean of the window plus a little noise."""
        rng = np.random.default_rng(seed)
        channels = 3 * scale * scale
        weight = rng.normal(0, 0.3 / kernel, (channels, 3, kernel, kernel))
        for out in range(channels):
            weight[out, out // (scale * scale)] += 1 / kernel ** 2
        return cls(weight.astype(np.float32), rng.normal(0, 0.02, channels).astype(np.float32), scale)

    @property
    def parameters(self) -> int:
        return self.weight.size + self.bias.size

    def save(self, path: Path, input_side: int | None = None, fp16: bool = False) -> Path:
        """Write the ONNX file; ``input_side`` fixes the input shape and ``fp16`` halves every tensor, as some exports do."""
        kernel = self.weight.shape[-1]
        element, dtype = (TensorProto.FLOAT16, np.float16) if fp16 else (TensorProto.FLOAT, np.float32)
        dims_in = [1, 3, input_side, input_side] if input_side else ["n", 3, "h", "w"]
        dims_out = [1, 3, input_side * self.scale, input_side * self.scale] if input_side else ["n", 3, "sh", "sw"]
        graph = helper.make_graph(
            [helper.make_node("Conv", ["image", "weight", "bias"], ["features"], pads=[(kernel - 1) // 2] * 4),
             helper.make_node("DepthToSpace", ["features"], ["upscaled"], blocksize=self.scale, mode="CRD")],
            "subpixel",
            [helper.make_tensor_value_info("image", element, dims_in)],
            [helper.make_tensor_value_info("upscaled", element, dims_out)],
            [numpy_helper.from_array(self.weight.astype(dtype), "weight"),
             numpy_helper.from_array(self.bias.astype(dtype), "bias")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        onnx.save(model, path)
        return path

    def reference(self, image: np.ndarray) -> np.ndarray:
        """numpy's result for an (H, W, 3) float image: (scale*H, scale*W, 3), float64."""
        kernel = self.weight.shape[-1]
        height, width = image.shape[:2]
        pad = (kernel - 1) // 2
        padded = np.pad(image.astype(np.float64).transpose(2, 0, 1), ((0, 0), (pad, pad), (pad, pad)))
        features = np.zeros((self.weight.shape[0], height, width))
        for dy in range(kernel):
            for dx in range(kernel):
                features += np.einsum("oc,chw->ohw", self.weight[:, :, dy, dx], padded[:, dy:dy + height, dx:dx + width])
        features += self.bias[:, None, None]
        s = self.scale
        # CRD: output channel c, row h*s + i, column w*s + j comes from input channel c*s*s + i*s + j.
        return features.reshape(3, s, s, height, width).transpose(3, 1, 4, 2, 0).reshape(height * s, width * s, 3)
