"""What folding SRResNet's output convolution buys: OpenVINO's per-layer profile and the time of one window.

For each window side, the network as published and its folded form (the one served) are compiled
the way the service compiles them and run on the same window of a real photo; the script prints the
median time of each and the share of time and of work of the output stage's layers.

    python -m bench.fold                  # windows of 144 and 272 (docs/speed.md)
    python -m bench.fold --sides 192 --runs 7

Run it under ``flock /tmp/cpu.lock`` on a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench.report import ROOT

if TYPE_CHECKING:
    import keras
    from openvino import ProfilingInfo

PHOTO = ROOT / "assets" / "test_examples" / "low_resolution" / "astronaut.png"


def window(side: int) -> np.ndarray:
    image = Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image, np.float32)[None] / 255


def convolution_flop(model: keras.Model) -> dict[str, float]:
    """FLOP per input pixel of each convolution of the published network."""
    import keras

    flop, pixels_per_input_pixel = {}, 1
    for layer in model.layers:
        if type(layer).__name__ == "DepthToSpace":
            pixels_per_input_pixel *= layer.block_size ** 2
        if isinstance(layer, keras.layers.Conv2D):
            flop[layer.name] = 2.0 * np.prod(layer.kernel.shape) * pixels_per_input_pixel
    return flop


def measure(compiled: dict, batch: np.ndarray, runs: int) -> dict[str, list[float]]:
    """Seconds of each run of each form, the forms taking turns so that a slower spell of a shared
    machine falls on both."""
    requests = {name: model.create_infer_request() for name, model in compiled.items()}
    for request in requests.values():
        request.infer([batch])
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(runs):
        for name, request in requests.items():
            started = time.perf_counter()
            request.infer([batch])
            times[name].append(time.perf_counter() - started)
    return times


def slowest_nodes(request_profile: Iterable[ProfilingInfo], count: int = 3) -> str:
    """The nodes that took most of the last run's time, with their share."""
    seconds = {f"{info.node_type} {info.node_name}": info.real_time.total_seconds() for info in request_profile}
    total = sum(seconds.values())
    return ", ".join(f"{node} {100 * spent / total:.0f} %" for node, spent in sorted(seconds.items(),
                                                                                      key=lambda item: -item[1])[:count])


def main() -> None:
    from bench.machine import measure_ceiling
    from config import load_settings
    from core.backends.openvino import compile_for_cpu
    from core.models.specs import SPECS
    from core.backends.tensorflow import configure_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[144, 272])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    configure_threads(args.threads)
    spec = SPECS["srgan"]
    published = spec.build(load_settings())
    forms = {"published": published, "folded": spec.inference_form(published)}
    compiled = {name: compile_for_cpu(model, args.threads, PERF_COUNT=True) for name, model in forms.items()}
    flop = convolution_flop(published)
    per_pixel = sum(flop.values())
    print(f"fp32 ceiling (numpy sgemm): {measure_ceiling():.0f} GFLOP/s")
    print(f"{per_pixel / 1e6:.2f} MFLOP per input pixel; the 9x9 output convolution's share: "
          f"{100 * flop['output_conv'] / per_pixel:.0f} %")
    for side in args.sides:
        batch = window(side)
        times = measure(compiled, batch, args.runs)
        for name, model in compiled.items():
            profile = model.create_infer_request()
            profile.infer([batch])
            median = statistics.median(times[name])
            print(f"{side}² {name:9}: {median:.3f} s (median of {args.runs}), "
                  f"{per_pixel * side * side / median / 1e9:.0f} GFLOP/s; "
                  f"slowest nodes: {slowest_nodes(profile.profiling_info)}")
        ratios = [folded / published for folded, published in zip(times["folded"], times["published"])]
        print(f"{side}² folded / published, run by run: median {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
