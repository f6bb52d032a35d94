"""``sr-upscale``: upscale image files and folders on the same core and limits as the server.

    sr-upscale photo.jpg holiday/ -o upscaled/ --model srgan --format png

A file goes to ``OUTDIR/<name>``; a folder to ``OUTDIR/<folder name>/...`` with its
structure kept. Outputs that already exist are skipped unless ``--overwrite``.
Settings such as ``MAX_INPUT_PIXELS`` or ``BACKEND`` come from the environment,
as for the server.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the progress bars

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
FORMAT_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class Summary:
    converted: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from core.models.registry import SPECS
    from core.pipeline import SCALES

    parser = argparse.ArgumentParser(
        prog="sr-upscale", description="Upscale images 4x (or 2x, 3x) with the service's models.",
        epilog="Limits and other settings come from the environment, as for the server "
               "(MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS, BACKEND, TILE_BATCH, REQUEST_TIME_LIMIT_S, ...).")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and folders")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    parser.add_argument("--model", choices=sorted(SPECS), help="model (default: the server's default, srgan)")
    parser.add_argument("--scale", type=int, choices=SCALES, default=4, help="output scale (default 4)")
    parser.add_argument("--format", choices=sorted(FORMAT_SUFFIXES), default="png", help="output format (default png)")
    parser.add_argument("--quality", type=int, default=90, help="jpeg/webp quality 1..100 (default 90)")
    parser.add_argument("--tile", type=int, metavar="PX", help="tile size in input pixels (default: TILE_SIZE, or the largest MEMORY_BUDGET_MB allows)")
    parser.add_argument("--ensemble", action="store_true", help="average 8 flips and rotations: slightly better, 8x slower")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be between 1 and 100, not {args.quality}")
    if args.tile is not None and args.tile < 16:
        parser.error(f"--tile must be at least 16 pixels, not {args.tile}")
    return args


def plan_jobs(inputs: Iterable[Path], output: Path, suffix: str) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every file to convert with its target, and the inputs that cannot be used, with why."""
    jobs: list[Job] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            root = output / item.resolve().name
            jobs += [Job(path, (root / path.relative_to(item)).with_suffix(suffix)) for path in _images_in(item)]
        elif item.is_file():
            jobs.append(Job(item, (output / item.name).with_suffix(suffix)))
        else:
            problems.append((item, "no such file or folder"))
    return _without_clashes(jobs, problems)


def _images_in(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _without_clashes(jobs: list[Job], problems: list[tuple[Path, str]]) -> tuple[list[Job], list[tuple[Path, str]]]:
    """``a.jpg`` and ``a.png`` would both become ``a.png``: the first wins, the others are reported."""
    first: dict[Path, Path] = {}
    kept = []
    for job in jobs:
        if job.target in first:
            problems.append((job.source, f"same output {job.target} as {first[job.target]}"))
        else:
            first[job.target] = job.source
            kept.append(job)
    return kept, problems


def load_service(model: str | None, tile: int | None):
    """The server's service with only the chosen model loaded."""
    from config import load_settings
    from core.service import Service

    overrides: dict[str, object] = {}
    if model is not None:
        overrides.update(models=model, default_model=model)
    else:
        overrides["models"] = load_settings().default_model
    if tile is not None:
        overrides["tile_size"] = tile
    service = Service.create(load_settings(**overrides))
    service.registry.load_all()
    return service


def convert(service, job: Job, options, tiles_bar) -> None:
    """Upscale one file into its target; written beside it first, so a half-written file never counts as done."""
    result = service.upscale(job.source.read_bytes(), options, tiles_bar)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    partial = job.target.with_name(f".{job.target.name}.partial")
    partial.write_bytes(result.data)
    partial.replace(job.target)


class TileBar:
    """The per-tile progress bar, shown only for images with more than one batch of tiles."""

    def __init__(self, name: str, batch: int) -> None:
        self._name = name
        self._batch = batch
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None and total > self._batch:
            self._bar = tqdm(total=total, desc=f"  {self._name}", unit="tile", leave=False, position=1)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.pipeline import UpscaleOptions

    jobs, problems = plan_jobs(args.inputs, args.output, FORMAT_SUFFIXES[args.format])
    summary = Summary(failed=list(problems))
    todo = [job for job in jobs if args.overwrite or not job.target.exists()]
    summary.skipped = [job.source for job in jobs if job not in todo]
    if todo:
        service = load_service(args.model, args.tile)
        model = service.settings.default_model
        state = service.registry.states()[model]
        if state != "ready":
            print(f"sr-upscale: model {model} could not be loaded: {state}", file=sys.stderr)
            return 2
        options = UpscaleOptions(model=model, scale=args.scale, output_format=args.format,
                                 quality=args.quality, ensemble=args.ensemble)
        started = time.perf_counter()
        with tqdm(todo, desc=f"{model} x{args.scale}", unit="file", position=0) as files:
            for job in files:
                tiles = TileBar(job.source.name, service.settings.tile_batch)
                try:
                    convert(service, job, options, tiles)
                    summary.converted.append(job.source)
                except Exception as error:  # noqa: BLE001 - one bad file must not stop the others
                    summary.failed.append((job.source, _reason(error)))
                    files.write(f"failed: {job.source}: {summary.failed[-1][1]}")
                finally:
                    tiles.close()
        summary.seconds = time.perf_counter() - started
    report(summary, args.output)
    return 1 if summary.failed else 0


def _reason(error: Exception) -> str:
    from core.errors import ServiceError

    if isinstance(error, ServiceError):
        return error.message
    return f"{type(error).__name__}: {error}"


def report(summary: Summary, output: Path) -> None:
    print(f"converted {len(summary.converted)} in {summary.seconds:.1f} s, skipped {len(summary.skipped)} already done"
          f"{' (use --overwrite to redo)' if summary.skipped else ''}, failed {len(summary.failed)}; output in {output}")
    for source, reason in summary.failed:
        print(f"FAILED {source}: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
