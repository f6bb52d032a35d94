"""PRECISION: which arithmetic each model runs in, and the recorded bf16_ok facts against a measurement."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core import metrics
from core.models import precision
from core.models.specs import SPECS
from core.backends.tensorflow import from_keras
from tests.conftest import SAMPLES

needs_native_bf16 = pytest.mark.skipif(not precision.native_bf16(), reason="this CPU has no native bf16")
BF16_OK = [name for name, spec in SPECS.items() if spec.bf16_ok]


@pytest.mark.parametrize(("setting", "backend", "bf16_ok", "native", "expected"), [
    ("auto", "openvino", True, True, "bf16"),
    ("auto", "openvino", True, False, "f32"),     # emulated bf16 is slower than f32
    ("auto", "openvino", False, True, "f32"),     # the model failed the bounds
    ("auto", "tensorflow", True, True, "f32"),    # the reference backends are fp32 only
    ("f32", "openvino", True, True, "f32"),
    ("bf16", "openvino", False, False, "bf16"),   # forced: the operator's choice
])
def test_resolve(setting, backend, bf16_ok, native, expected):
    assert precision.resolve(setting, backend, bf16_ok, native) == expected


def test_bf16_needs_openvino():
    with pytest.raises(ValueError, match="PRECISION=bf16 needs BACKEND=openvino"):
        precision.resolve("bf16", "xla", True, True)


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\nbugs\t\t: none\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()


def _photo(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32)[None] / 255


def _levels(batch: np.ndarray) -> np.ndarray:
    return np.rint(batch[0] * 255)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_photo(path) for path in sorted(SAMPLES.glob("*.png"))]


@pytest.mark.slow
@needs_native_bf16
@pytest.mark.parametrize(("name", "key"), [(name, key) for name in BF16_OK for key in SPECS[name].keys])
def test_every_network_of_a_bf16_ok_model_stays_within_the_bound_on_every_photo(settings, photos, name, key):
    """bench.precision decides bf16_ok from a 500² photo and the quality sets too: a model left in f32 may
    pass on these small photos (realesrgan does here and fails on the 500² photo)."""
    spec = SPECS[name]
    variant = spec.variant(*key)
    model, statistics = variant.keras_form(settings)
    served = spec.inference_form(model) if spec.inference_form else model
    f32, bf16 = (from_keras(name, served, spec.margin, "openvino", scale=variant.scale, border=variant.border,
                                    statistics=statistics, precision=arithmetic) for arithmetic in ("f32", "bf16"))
    lowest = min(metrics.psnr(_levels(f32.predict(photo)), _levels(bf16.predict(photo))) for photo in photos)
    assert lowest >= precision.MIN_BF16_PSNR_DB, f"{name}: lowest {lowest:.1f} dB"
