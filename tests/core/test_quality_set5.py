"""Set5 (4x) through the core, scored with the standard protocol; skipped without the evaluation data."""
from __future__ import annotations

import json

import pytest

from config import load_settings
from core.models import precision
from core.models.specs import SPECS
from core.service import Service
from harness.bicubic import matlab_bicubic
from harness.evaluation import (
    RESULTS_FILE,
    array_upscaler,
    evaluate,
    pairs,
    service_upscaler,
)

# How far a fresh run may drift from the published table (thread counts and CPU kernels move the last digits).
TABLE_TOLERANCE_DB = 0.05


def table_psnr(method: str) -> float | None:
    results = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    return results.get(method, {}).get("Set5", {}).get("psnr")


@pytest.fixture(scope="module")
def set5(datasets_dir):
    return pairs(datasets_dir, "Set5")


def test_bicubic_baseline_reproduces_the_literature(set5):
    # Papers give 28.42 / 0.8104 with Y rounded to uint8; with float Y it is 28.43 / 0.8111.
    result = evaluate(array_upscaler(matlab_bicubic), set5)
    assert result.images == 5
    assert result.psnr == pytest.approx(28.43, abs=0.01)
    assert result.ssim == pytest.approx(0.8111, abs=0.0005)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "floor_db"), [("srresnet", 31.8), ("srgan", 28.9)])
def test_srgan_models_on_set5(service, set5, model, floor_db):
    result = evaluate(service_upscaler(service, model), set5)
    assert result.psnr >= floor_db
    published = table_psnr(model)
    if published is not None:
        assert result.psnr == pytest.approx(published, abs=TABLE_TOLERANCE_DB)


@pytest.mark.slow
def test_realsr_on_set5_matches_its_table_value(set5):
    pytest.importorskip("core.models.ncnn_graph", reason="the ncnn graph builder is not in this tree")
    published = table_psnr("realsr")
    if published is None:
        pytest.skip(f"no realsr Set5 entry in {RESULTS_FILE.name} yet")
    realsr = Service.create(load_settings(models="realsr", default_model="realsr"))
    realsr.registry.load_all()
    result = evaluate(service_upscaler(realsr, "realsr"), set5)
    assert result.psnr >= 30.0
    assert result.psnr == pytest.approx(published, abs=TABLE_TOLERANCE_DB)


@pytest.mark.slow
@pytest.mark.skipif(not precision.native_bf16(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("model", [name for name, spec in SPECS.items() if spec.bf16_ok])
def test_bf16_moves_set5_by_at_most_the_quality_tolerance(set5, model):
    scores = {}
    for arithmetic in ("f32", "bf16"):
        served = Service.create(load_settings(models=model, default_model=model, precision=arithmetic))
        served.registry.load_all()
        assert served.registry.get(model).precision == arithmetic
        scores[arithmetic] = evaluate(service_upscaler(served, model), set5).psnr
    assert abs(scores["bf16"] - scores["f32"]) <= precision.MAX_QUALITY_SHIFT_DB
