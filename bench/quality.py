"""Quality benchmark: PSNR/SSIM of every model on Set5, Set14 and BSD100 (4x).

    python -m bench.quality [--models srgan,srresnet] [--sets Set5,Set14] \
        [--ensemble srresnet,srgan,realsr:Set5] [--limit N] [--no-montage]

Every image goes through the service's core exactly as an upload would (the LR file's
bytes -> ``Service.upscale`` -> PNG, tiled as served) and is scored with ``core.metrics``
on the standard protocol (Y of BT.601, 4-pixel border, per-image mean). Results are kept in
``docs/quality-results.json``, so that a run of some models or sets updates only those rows;
the quality section of ``docs/benchmarks.md`` and the montages are drawn from that file.
A run with ``--limit`` is a quick check: it prints its scores and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from bench.montage import (
    MONTAGE_FILE,
    QUALITY_CROPS,
    REALSR_CROPS,
    REALSR_MONTAGE_FILE,
    montage,
)
from bench.quality_table import (
    BICUBIC_MATLAB,
    BICUBIC_PILLOW,
    ENSEMBLE_SUFFIX,
    MODELS,
    SETS,
    load_results,
    render_section,
)
from bench.report import BENCHMARKS_FILE, ROOT, write_section
from config import Settings, load_settings
from core.service import Service
from harness.bicubic import matlab_bicubic, pillow_bicubic
from harness.evaluation import (
    RESULTS_FILE,
    Upscaler,
    array_upscaler,
    evaluate,
    pairs,
    service_upscaler,
)

DEFAULT_ENSEMBLE = "srresnet,srgan,realsr:Set5"


def parse_ensemble(spec: str, sets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """'srresnet,srgan,realsr:Set5' -> {model: sets to evaluate with self-ensemble}; 'none' -> {}."""
    plan: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item == "none":
            continue
        model, _, only = item.partition(":")
        chosen = tuple(only.split("+")) if only else sets
        plan[model] = tuple(s for s in chosen if s in sets)
    return plan


# ---------------------------------------------------------------- the command

def build_service(settings: Settings) -> Service:
    service = Service.create(settings)
    service.registry.load_all()
    failed = {name: state for name, state in service.registry.states().items() if state != "ready"}
    if failed:
        print(f"models not available: {failed}", file=sys.stderr)
    return service


def ready_models(service: Service, wanted: tuple[str, ...]) -> tuple[str, ...]:
    states = service.registry.states()
    return tuple(name for name in wanted if states.get(name) == "ready")


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        write_section("quality", render_section(load_results()))
        print(f"wrote {BENCHMARKS_FILE.relative_to(ROOT)} from {RESULTS_FILE.relative_to(ROOT)}")
        return 0
    sets = tuple(args.sets.split(","))
    models = tuple(args.models.split(","))
    ensemble_plan = parse_ensemble(args.ensemble, sets)
    # The montages always show every model, so then all of them are loaded even when fewer are scored.
    loaded = MODELS if args.montage else tuple(m for m in MODELS if m in models or m in ensemble_plan)
    settings = load_settings(models=",".join(loaded), default_model=loaded[0], request_time_limit_s=3600.0,
                             **({"datasets_dir": args.datasets_dir} if args.datasets_dir else {}))
    service = build_service(settings)
    available = ready_models(service, loaded)

    methods: dict[str, tuple[Upscaler, tuple[str, ...]]] = {
        BICUBIC_MATLAB: (array_upscaler(matlab_bicubic), sets),
        BICUBIC_PILLOW: (array_upscaler(pillow_bicubic), sets),
    }
    for model in models:
        if model not in available:
            print(f"skipping {model}: not available", file=sys.stderr)
            continue
        methods[model] = (service_upscaler(service, model), sets)
        if ensemble_plan.get(model):
            methods[model + ENSEMBLE_SUFFIX] = (service_upscaler(service, model, ensemble=True), ensemble_plan[model])

    results = load_results()
    for set_name in sets:
        set_pairs = pairs(settings.datasets_dir, set_name, args.limit)
        for method, (upscale, method_sets) in methods.items():
            if set_name not in method_sets:
                continue
            result = evaluate(upscale, set_pairs)
            print(f"{set_name:7s} {method:22s} PSNR {result.psnr:6.3f}  SSIM {result.ssim:.4f}  "
                  f"{result.images:3d} images  {result.seconds:7.1f} s", flush=True)
            if args.limit is None:
                backend = {} if method in (BICUBIC_MATLAB, BICUBIC_PILLOW) else {"backend": service.registry.choice.backend}
                results.setdefault(method, {})[set_name] = asdict(result) | backend
                RESULTS_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")

    if args.limit is not None:
        print("--limit given: scores printed only, docs left as they are")
        return 0
    write_section("quality", render_section(results))
    print(f"wrote {BENCHMARKS_FILE.relative_to(ROOT)} and {RESULTS_FILE.relative_to(ROOT)}")
    if args.montage:
        upscalers = {model: service_upscaler(service, model) for model in available}
        montage(QUALITY_CROPS, settings.datasets_dir, upscalers, with_hr=True).save(MONTAGE_FILE, optimize=True)
        montage(REALSR_CROPS, settings.datasets_dir, upscalers, with_hr=False).save(REALSR_MONTAGE_FILE, optimize=True)
        print(f"wrote {MONTAGE_FILE.relative_to(ROOT)} and {REALSR_MONTAGE_FILE.relative_to(ROOT)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models to score")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated sets")
    parser.add_argument("--ensemble", default=DEFAULT_ENSEMBLE,
                        help="models also scored with self-ensemble, each optionally limited to sets "
                             "(model:Set5+Set14); 'none' for none")
    parser.add_argument("--limit", type=int, default=None, help="first N images per set only (prints, writes nothing)")
    parser.add_argument("--datasets-dir", type=Path, default=None, help="overrides DATASETS_DIR")
    parser.add_argument("--report-only", action="store_true",
                        help=f"redraw the table from {RESULTS_FILE.name} without measuring anything")
    parser.add_argument("--no-montage", dest="montage", action="store_false", help="skip the montage pictures")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
