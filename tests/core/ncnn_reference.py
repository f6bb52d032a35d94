"""ncnn itself as the reference for the Keras graphs, and ncnn files with random weights for small graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.models import ncnn

FP16_TAG = bytes.fromhex("476b3001")


def blob_names(path: Path) -> tuple[str, str]:
    """The graph's input blob and its one output blob (the blob no layer consumes)."""
    graph = ncnn.parse_param(path.with_name(path.name + ".param").read_text())
    consumed = {blob for layer in graph.layers for blob in layer.inputs}
    (source,) = [layer.outputs[0] for layer in graph.layers if layer.type == "Input"]
    (result,) = [blob for layer in graph.layers for blob in layer.outputs if blob not in consumed]
    return source, result


def run_ncnn(path: Path, image: np.ndarray) -> np.ndarray:
    """ncnn's own output of ``path.{param,bin}`` for an (H, W, 3) image, computed in fp32 on the CPU.

    ncnn.Mat wraps numpy memory with channels h * w floats apart, but ncnn's layers expect each
    channel 16-byte aligned: keep h * w a multiple of 4 or ncnn reads garbage.
    """
    import ncnn as ncnn_runtime

    assert image.shape[0] * image.shape[1] % 4 == 0
    net = ncnn_runtime.Net()
    net.opt.use_vulkan_compute = False
    # ncnn may store and compute in fp16/bf16 on CPUs that support it; the reference must be fp32.
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    assert net.load_param(str(path.with_name(path.name + ".param"))) == 0
    assert net.load_model(str(path.with_name(path.name + ".bin"))) == 0
    source, result = blob_names(path)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    mat = ncnn_runtime.Mat(chw)  # wraps chw's memory without copying: chw must outlive the extraction
    extractor = net.create_extractor()
    extractor.input(source, mat)
    status, output = extractor.extract(result)
    assert status == 0
    return np.array(output).transpose(1, 2, 0)


def write_model(path: Path, param_text: str, rng: np.random.Generator, fp32_layers: frozenset[str] = frozenset()) -> None:
    """``param_text`` with random weights, stored as ncnn stores them: kernels and matrices fp16 behind
    the tag (fp32 behind a zero tag for ``fp32_layers``), biases, slopes and constants untagged fp32."""
    path.with_name(path.name + ".param").write_text(param_text)
    graph = ncnn.parse_param(param_text)
    data = b""
    for layer in graph.layers:
        if layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
            count = int(layer.param(6 if layer.type != "InnerProduct" else 2, 0))
            # Scaled so that activations stay in a range where fp32 rounding differences stay small.
            kernel = rng.standard_normal(count) * 0.3
            if layer.name in fp32_layers:
                data += bytes(4) + kernel.astype("<f4").tobytes()
            else:
                stored = kernel.astype("<f2").tobytes()
                data += FP16_TAG + stored + bytes(-len(stored) % 4)
            if int(layer.param(5 if layer.type != "InnerProduct" else 1, 0)):
                data += rng.standard_normal(int(layer.param(0, 0))).astype("<f4").tobytes()
        elif layer.type == "PReLU":
            data += rng.uniform(0, 0.5, int(layer.param(0, 1))).astype("<f4").tobytes()
        elif layer.type == "MemoryData":
            size = int(layer.param(0, 1)) * int(layer.param(1, 1)) * int(layer.param(2, 1))
            data += rng.random(size).astype("<f4").tobytes()
    path.with_name(path.name + ".bin").write_bytes(data)
