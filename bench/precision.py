"""Which models may run in bf16: each model's bf16 output against its fp32 output, as served.

    python -m bench.precision [--models srgan,realesrgan] [--sets Set5,Set14 | none] [--no-write]

For every model, one service in fp32 and one in bf16 (``PRECISION``) upscale the test photos
(assets/test_examples) and the evaluation sets through the core exactly as uploads are; the script
reports the PSNR of the bf16 result against the fp32 one, the largest difference in grey levels, the
share of values off by more than one level, and how far the quality table's PSNR moves. A model is
``bf16_ok`` (core/models/specs.py) when it meets both bounds of core/models/precision.py; the
quality sets are scored only for models that pass the photo bound. The results go to the precision
section of docs/benchmarks.md. Needs a CPU with native bf16 (elsewhere bf16 is emulated, and the
service never picks it). Where PyTorch sees a GPU, the GPU's precisions are measured instead: fp16 and
bf16 against f32 for every network (``python -m bench.gpu --no-requests``, docs/gpu.md).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from bench.machine import cpu_description
from bench.report import ROOT, write_section
from config import load_settings
from core import memory, metrics
from core.backends import cuda_available
from core.models import precision
from core.models.specs import PACKAGED, SPECS
from core.options import UpscaleOptions
from core.service import Service
from harness import evaluation
from harness.photos import photo_png

PHOTOS = ROOT / "assets" / "test_examples" / "low_resolution"
# Besides the test photos (at most 150 px, one window each), one photo at the size the speed targets
# name, so that tiles and their seams are compared too.
LARGE_SIDE = 500
MODELS = PACKAGED
SETS = ("Set5", "Set14")


@dataclass(frozen=True)
class Comparison:
    model: str
    min_psnr_db: float
    max_levels: int
    share_off_by_more_than_one: float
    quality_shift_db: dict[str, float]

    @property
    def passes(self) -> bool:
        return (self.min_psnr_db >= precision.MIN_BF16_PSNR_DB and bool(self.quality_shift_db)
                and max(abs(shift) for shift in self.quality_shift_db.values()) <= precision.MAX_QUALITY_SHIFT_DB)


def service(model: str, arithmetic: str, beside_mb: int = 0) -> Service:
    """The model served in ``arithmetic``; ``beside_mb``: what another service in this process holds, added to
    the budget so that the tiles are those a worker serving the model alone would choose."""
    defaults = load_settings()
    settings = load_settings(models=model, default_model=model, backend="openvino", precision=arithmetic,
                             request_time_limit_s=3600.0,
                             memory_budget_mb=defaults.memory_budget_bytes("cpu") // memory.MEBIBYTE + beside_mb)
    created = Service.create(settings)
    created.registry.load_all()
    if not created.registry.ready:
        raise RuntimeError(f"{model} in {arithmetic} did not load: {created.registry.states()}")
    return created


def photos() -> dict[str, bytes]:
    found = {path.name: path.read_bytes() for path in sorted(PHOTOS.glob("*.png"))}
    return found | {f"astronaut {LARGE_SIDE}²": photo_png(LARGE_SIDE)}


def photo_differences(f32: Service, bf16: Service, model: str) -> tuple[float, int, float]:
    """Lowest PSNR, largest level difference and share of values off by more than one, over the photos and
    every network of the model (each native scale and denoise level)."""
    psnrs, largest, off, values = [], 0, 0, 0
    for scale, denoise in SPECS[model].keys:
        options = UpscaleOptions(model=model, scale=scale, denoise=denoise)
        for name, data in photos().items():
            reference = evaluation.read_image(f32.upscale(data, options).data)
            candidate = evaluation.read_image(bf16.upscale(data, options).data)
            difference = np.abs(reference.astype(np.int16) - candidate)
            psnrs.append(metrics.psnr(reference.astype(np.float64), candidate.astype(np.float64)))
            largest, off = max(largest, int(difference.max())), off + int((difference > 1).sum())
            values += difference.size
            print(f"  {model} {scale}x {denoise} {name}: {psnrs[-1]:.1f} dB, max {difference.max()} levels",
                  flush=True)
    return min(psnrs), largest, off / values


def quality_shift(f32: Service, bf16: Service, model: str, sets: tuple[str, ...]) -> dict[str, float]:
    """bf16's mean PSNR minus fp32's on each set, scored as the quality table scores."""
    shifts = {}
    for set_name in sets:
        pairs = evaluation.pairs(f32.settings.datasets_dir, set_name)
        scores = {name: evaluation.evaluate(evaluation.service_upscaler(served, model), pairs).psnr
                  for name, served in (("f32", f32), ("bf16", bf16))}
        shifts[set_name] = scores["bf16"] - scores["f32"]
        print(f"  {model} {set_name}: f32 {scores['f32']:.3f} dB, bf16 {scores['bf16']:.3f} dB", flush=True)
    return shifts


def compare(model: str, sets: tuple[str, ...]) -> Comparison:
    before = memory.rss_bytes()
    f32 = service(model, "f32")
    bf16 = service(model, "bf16", beside_mb=(memory.rss_bytes() - before) // memory.MEBIBYTE)
    lowest, largest, share = photo_differences(f32, bf16, model)
    shifts = quality_shift(f32, bf16, model, sets) if lowest >= precision.MIN_BF16_PSNR_DB else {}
    return Comparison(model, lowest, largest, share, shifts)


def markdown(rows: list[Comparison], sets: tuple[str, ...]) -> str:
    lines = [
        "## bf16 against fp32", "",
        f"Measured by `python -m bench.precision` on {cpu_description()}. Each model "
        "runs as served (OpenVINO, tiled) once with `PRECISION=f32` and once with `PRECISION=bf16`; "
        f"*photos* compares the two outputs on the {len(photos()) - 1} test photos "
        f"(assets/test_examples) and on astronaut resampled to {LARGE_SIDE}² (several tiles), through every "
        f"network of the model (each native scale and denoise level), *quality shift* is bf16's mean PSNR minus fp32's on {', '.join(sets)} "
        f"(scored only when the photos pass). `bf16_ok` needs ≥ {precision.MIN_BF16_PSNR_DB:.0f} dB on every "
        f"photo and a shift of at most {precision.MAX_QUALITY_SHIFT_DB} dB.", "",
        "| model | lowest PSNR vs f32 (dB) | max difference (levels) | values off by > 1 level | "
        + " | ".join(f"{s} shift (dB)" for s in sets) + " | bf16_ok |",
        "|---|---:|---:|---:|" + "---:|" * len(sets) + "---|",
    ]
    for row in rows:
        shifts = [f"{row.quality_shift_db[s]:+.3f}" if s in row.quality_shift_db else "—" for s in sets]
        lines.append(f"| {row.model} | {row.min_psnr_db:.1f} | {row.max_levels} | "
                     f"{100 * row.share_off_by_more_than_one:.3f} % | " + " | ".join(shifts)
                     + f" | {'yes' if row.passes else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if cuda_available():
        from bench import gpu

        return gpu.main(["--no-requests", "--models", args.models])
    if not precision.native_bf16():
        print("this CPU has no native bf16: nothing to measure", file=sys.stderr)
        return 1
    sets = tuple(s for s in args.sets.split(",") if s and s != "none")
    rows = []
    for model in args.models.split(","):
        rows.append(compare(model, sets))
        recorded = SPECS[model].bf16_ok
        print(f"{model}: {'passes' if rows[-1].passes else 'fails'} (registry says bf16_ok={recorded})", flush=True)
    section = markdown(rows, sets)
    print(section)
    if not args.no_write:
        write_section("precision", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
