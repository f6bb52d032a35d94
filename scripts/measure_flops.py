"""Work per input pixel of each model's 4x network: TensorFlow's profiler on the Keras graph, on one window.

    .venv/bin/python scripts/measure_flops.py [--models srgan,span] [--sides 64 128 256]

Counts the floating-point operations of the traced graph (convolutions dominate) and divides by the
window's pixels. A graph that crops its borders (Real-CUGAN) shows a figure that grows with the window.
bench/speed.py's MFLOP_PER_PIXEL comes from here.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def mflop_per_pixel(model: str, side: int) -> float:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from config import load_settings
    from core.models.specs import SPECS
    from core.options import NO_DENOISE

    keras_model = SPECS[model].variant(4, NO_DENOISE).build(load_settings())
    shapes = [tf.TensorSpec([1, side, side, 3] if index == 0 else [1, *tensor.shape[1:]], tf.float32)
              for index, tensor in enumerate(keras_model.inputs)]
    traced = tf.function(lambda *inputs: keras_model(list(inputs) if len(inputs) > 1 else inputs[0], training=False))
    graph = convert_variables_to_constants_v2(traced.get_concrete_function(*shapes)).graph
    profile = tf.compat.v1.profiler.profile(graph=graph, options=tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
    return profile.total_float_ops / side ** 2 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="srgan,realesrgan,span,anime,realcugan")
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    for model in args.models.split(","):
        figures = ", ".join(f"{side}²: {mflop_per_pixel(model, side):.2f}" for side in args.sides)
        print(f"{model:10} MFLOP per input pixel at {figures}", flush=True)


if __name__ == "__main__":
    main()
