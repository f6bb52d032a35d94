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
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from config import Settings, load_settings
from core import metrics
from core.options import UpscaleOptions
from core.service import Service

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS_FILE = DOCS / "quality-results.json"
BENCHMARKS_FILE = DOCS / "benchmarks.md"
MONTAGE_FILE = DOCS / "quality-montage.png"
REALSR_MONTAGE_FILE = DOCS / "realsrset-montage.png"
START_MARKER, END_MARKER = "<!-- quality:start -->", "<!-- quality:end -->"

SCALE = 4
SETS = ("Set5", "Set14", "BSD100")
MODELS = ("srgan", "srresnet", "realsr", "realesrgan", "span", "anime", "realcugan")
DEFAULT_ENSEMBLE = "srresnet,srgan,realsr:Set5"
BICUBIC_MATLAB, BICUBIC_PILLOW = "bicubic-matlab", "bicubic-pillow"
ENSEMBLE_SUFFIX = "+ensemble"

# Published 4x PSNR / SSIM, for the comparison rows (Ledig et al., CVPR 2017, table 4; and the
# original MAX model's README, which does not say how it measured).
PUBLISHED: dict[str, dict[str, str]] = {
    "SRResNet, Ledig et al. 2017 (published)": {"Set5": "32.05 / 0.9019", "Set14": "28.49 / 0.8184", "BSD100": "27.58 / 0.7620"},
    "SRGAN, Ledig et al. 2017 (published)": {"Set5": "29.40 / 0.8472", "Set14": "26.02 / 0.7397", "BSD100": "25.16 / 0.6688"},
    "Original MAX model (its README's claims)": {"Set5": "29.56 / 0.85", "Set14": "26.25 / 0.72", "BSD100": "24.4 / 0.67"},
}


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class Pair:
    name: str
    lr: Path
    hr: Path


def pairs(datasets_dir: Path, set_name: str, limit: int | None = None) -> list[Pair]:
    """The (LR, HR) files of a set, by the ``HR/<name>.png`` <-> ``LR_bicubic/X4/<name>x4.png`` naming."""
    hr_dir = datasets_dir / set_name / "HR"
    lr_dir = datasets_dir / set_name / "LR_bicubic" / f"X{SCALE}"
    found = [Pair(hr.stem, lr_dir / f"{hr.stem}x{SCALE}.png", hr) for hr in sorted(hr_dir.glob("*.png"))]
    if not found:
        raise FileNotFoundError(f"no HR images in {hr_dir} (set DATASETS_DIR or datasets_dir)")
    return found[:limit]


def read_image(path: Path | bytes) -> np.ndarray:
    """uint8 (H, W, 3); grey files are repeated into R, G and B."""
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
        return metrics.as_rgb(np.asarray(image.convert("L" if image.mode in ("L", "LA") else "RGB")))


def ground_truth(pair: Pair, shape: tuple[int, ...]) -> np.ndarray:
    """HR cropped from the top-left to the output's size (Set14 has sides that are not multiples of 4)."""
    return read_image(pair.hr)[:shape[0], :shape[1]]


# ---------------------------------------------------------------- bicubic baselines

def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's imresize."""
    ax = np.abs(x)
    near = 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    far = -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def _matlab_upscale_matrix(length: int, scale: int) -> np.ndarray:
    """(length*scale, length) interpolation matrix of MATLAB's imresize(..., 'bicubic') for scale > 1."""
    out = np.arange(1, length * scale + 1, dtype=np.float64)
    centre = out / scale + 0.5 * (1 - 1 / scale)          # output pixel centre in 1-based input coordinates
    taps = np.floor(centre - 2)[:, None] + np.arange(6)[None, :]
    weights = _keys_cubic(centre[:, None] - taps)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(length), np.arange(length - 1, -1, -1)])  # symmetric border
    columns = mirror[(taps.astype(np.int64) - 1) % (2 * length)]
    matrix = np.zeros((len(out), length))
    np.add.at(matrix, (np.repeat(np.arange(len(out)), 6), columns.ravel()), weights.ravel())
    return matrix


def _round_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def matlab_bicubic(image: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of uint8 (H, W, C): rows first, rounding after each pass."""
    rows = _matlab_upscale_matrix(image.shape[0], scale)
    cols = _matlab_upscale_matrix(image.shape[1], scale)
    tall = _round_uint8(np.tensordot(rows, image.astype(np.float64), axes=(1, 0)))
    return _round_uint8(np.tensordot(tall.astype(np.float64), cols, axes=(1, 1)).transpose(0, 2, 1))


def pillow_bicubic(image: np.ndarray, scale: int = SCALE) -> np.ndarray:
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------- methods and scores

Upscaler = Callable[[bytes], np.ndarray]   # encoded LR image -> uint8 (4H, 4W, 3)


def service_upscaler(service: Service, model: str, ensemble: bool = False) -> Upscaler:
    """The model as the server runs it: upload bytes in, PNG out, decoded to uint8 RGB."""
    options = UpscaleOptions(model=model, ensemble=ensemble)
    return lambda data: read_image(service.upscale(data, options).data)


def array_upscaler(resize: Callable[[np.ndarray], np.ndarray]) -> Upscaler:
    return lambda data: resize(read_image(data))


@dataclass(frozen=True)
class SetResult:
    psnr: float
    ssim: float
    images: int
    seconds: float


def evaluate(upscale: Upscaler, set_pairs: list[Pair]) -> SetResult:
    """Mean per-image PSNR/SSIM of ``upscale`` over the pairs; seconds count the upscaling only."""
    scores, seconds = [], 0.0
    for pair in set_pairs:
        data = pair.lr.read_bytes()
        started = time.perf_counter()
        sr = upscale(data)
        seconds += time.perf_counter() - started
        scores.append(metrics.score(sr, ground_truth(pair, sr.shape), border=SCALE))
    return SetResult(float(np.mean([s.psnr for s in scores])), float(np.mean([s.ssim for s in scores])),
                     len(scores), seconds)


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


# ---------------------------------------------------------------- the report

def _load_results() -> dict[str, dict[str, dict[str, float]]]:
    return json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}


def _cell(result: dict[str, float] | None) -> str:
    return "—" if result is None else f"{result['psnr']:.2f} / {result['ssim']:.4f}"


def _time_cell(method: str, results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Upscaling seconds per set; for an ensemble row also its cost relative to the plain model on the same backend."""
    row = results.get(method, {})
    plain = results.get(method.removesuffix(ENSEMBLE_SUFFIX), {})
    parts = []
    for set_name in SETS:
        if set_name not in row:
            parts.append("—")
            continue
        seconds = row[set_name]["seconds"]
        text = f"{seconds:.1f}"
        if method.endswith(ENSEMBLE_SUFFIX) and plain.get(set_name, {}).get("backend") == row[set_name].get("backend"):
            text += f" (×{seconds / plain[set_name]['seconds']:.1f})"
        parts.append(text)
    return " / ".join(parts)


def _backends(row: dict[str, dict[str, float]]) -> str:
    return ", ".join(sorted({str(entry.get("backend", "NumPy / Pillow")) for entry in row.values()}))


def _label(method: str) -> str:
    if method == BICUBIC_MATLAB:
        return "Bicubic, MATLAB-compatible `imresize` (ours)"
    if method == BICUBIC_PILLOW:
        return "Bicubic, Pillow `BICUBIC` (ours)"
    model, ensemble = method.removesuffix(ENSEMBLE_SUFFIX), method.endswith(ENSEMBLE_SUFFIX)
    return f"`{model}`" + (" + self-ensemble" if ensemble else "") + " (ours)"


def _method_order(results: dict[str, dict]) -> list[str]:
    ordered = [BICUBIC_MATLAB, BICUBIC_PILLOW]
    for model in MODELS:
        ordered += [model, model + ENSEMBLE_SUFFIX]
    return [m for m in ordered if m in results] + sorted(m for m in results if m not in ordered)


def render_section(results: dict[str, dict[str, dict[str, float]]]) -> str:
    header = ("| method | Set5 PSNR / SSIM | Set14 PSNR / SSIM | BSD100 ¹ PSNR / SSIM | "
              "upscaling seconds: Set5 / Set14 / BSD100 | backend |\n|---|---|---|---|---|---|")
    published = [f"| {name} | " + " | ".join(row[s] for s in SETS) + " | | |"
                 for name, row in PUBLISHED.items()]
    ours = [f"| {_label(m)} | " + " | ".join(_cell(results[m].get(s)) for s in SETS)
            + f" | {_time_cell(m, results)} | {_backends(results[m])} |" for m in _method_order(results)]
    return "\n".join([
        "## Quality (4x, PSNR dB / SSIM)",
        "",
        "Reproduce with `make bench-quality` (`python -m bench.quality`; `--help` for options). "
        "Evaluation images are read from `DATASETS_DIR` (default `../shared/datasets`).",
        "",
        header, *published, *ours,
        "",
        "Protocol: LR inputs are the `LR_bicubic/X4` files; every image goes through the service's core "
        "as an upload does (tiled as served, output PNG, uint8). PSNR and SSIM are computed on the luma of "
        "ITU-R BT.601, Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], **kept as float** "
        "(not rounded to uint8 as MATLAB's `rgb2ycbcr` does), with 4 pixels cropped from every side; SSIM "
        "uses an 11x11 Gaussian window (σ 1.5), K1 = 0.01, K2 = 0.03, L = 255, valid windows only; each "
        "score is the mean of the per-image values. HR images are cropped from the top-left to the output "
        "size (four Set14 images have sides that are not multiples of 4). The grey Set14 image `bridge` is "
        "measured as RGB with its grey value repeated (Y = 16 + 219 v / 255), both HR and output; the "
        "service feeds the network that RGB and returns a grey PNG (BT.601 luma of the network's output).",
        "",
        "¹ BSD100's LR files (SelfExSR) match MATLAB's bicubic `imresize` except in the outer ~2 LR pixels, "
        "which were made with replicate instead of symmetric borders; scores can differ slightly from papers "
        "that used EDSR's benchmark LR.",
        "",
        "Bicubic rows upscale the same LR files: *MATLAB-compatible* is our NumPy re-implementation of "
        "`imresize(x, 4, 'bicubic')` (Keys a = −0.5, symmetric borders, uint8 rounding after each pass), the "
        "one behind the papers' bicubic rows; *Pillow* is `Image.resize(..., BICUBIC)`.",
        "",
        "Self-ensemble (`ensemble=true`) averages the model over the 8 flips and rotations; the factor in "
        "brackets is its time relative to the same model without it. Times are wall-clock seconds for all "
        "images of a set (decode, tiles, network, PNG encode) on this project's 2-core CPU benchmark machine, "
        "with the inference backend named in the last column (the scores do not depend on it beyond the last "
        "digit).",
        "",
        f"![Crops: LR, bicubic, each model, HR]({MONTAGE_FILE.name})",
        "",
        "Crops from Set14 and BSD100, left to right: the LR input (nearest-neighbour), MATLAB-compatible "
        "bicubic, each model, the HR ground truth.",
        "",
        f"![RealSRSet crops: LR, bicubic, each model]({REALSR_MONTAGE_FILE.name})",
        "",
        "Real-world low-resolution inputs from RealSRSet (no ground truth): what each model does to JPEG "
        "artefacts, noise, blur and old-photo grain.",
    ])


def write_section(section: str, path: Path = BENCHMARKS_FILE) -> None:
    """Replace the quality section between its markers, leaving the rest of the file as it is."""
    block = f"{START_MARKER}\n{section}\n{END_MARKER}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START_MARKER in text and END_MARKER in text:
        before, _, rest = text.partition(START_MARKER)
        _, _, after = rest.partition(END_MARKER)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- montages

@dataclass(frozen=True)
class Crop:
    path: str          # relative to the datasets folder
    x: int             # top-left of the crop in LR pixels
    y: int
    size: int          # side in LR pixels
    hr: str | None = None


QUALITY_CROPS = (
    Crop("Set14/LR_bicubic/X4/comicx4.png", 12, 8, 40, "Set14/HR/comic.png"),
    Crop("Set14/LR_bicubic/X4/zebrax4.png", 40, 8, 40, "Set14/HR/zebra.png"),
    Crop("Set14/LR_bicubic/X4/baboonx4.png", 70, 0, 40, "Set14/HR/baboon.png"),
    Crop("BSD100/LR_bicubic/X4/8023x4.png", 45, 12, 40, "BSD100/HR/8023.png"),
    Crop("BSD100/LR_bicubic/X4/108005x4.png", 40, 20, 40, "BSD100/HR/108005.png"),
    Crop("BSD100/LR_bicubic/X4/148026x4.png", 20, 70, 40, "BSD100/HR/148026.png"),
)
REALSR_CROPS = (
    Crop("RealSRSet/oldphoto2.png", 50, 45, 48),
    Crop("RealSRSet/0014.jpg", 60, 50, 48),
    Crop("RealSRSet/dped_crop00061.png", 10, 75, 48),
    Crop("RealSRSet/chip.png", 30, 25, 48),
    Crop("RealSRSet/Lincoln.png", 55, 60, 48),
)
CONTEXT = 16      # LR pixels of context around a crop, so that the models see it as inside an image
LABEL_HEIGHT = 18
GAP = 4


def _upscale_crop(upscale: Upscaler, lr: np.ndarray, crop: Crop) -> np.ndarray:
    """Upscale the crop with context around it (encoded as PNG, as an upload), then cut the crop out."""
    top, left = max(crop.y - CONTEXT, 0), max(crop.x - CONTEXT, 0)
    window = lr[top:crop.y + crop.size + CONTEXT, left:crop.x + crop.size + CONTEXT]
    buffer = io.BytesIO()
    Image.fromarray(window).save(buffer, "PNG")
    out = upscale(buffer.getvalue())
    y, x = (crop.y - top) * SCALE, (crop.x - left) * SCALE
    return out[y:y + crop.size * SCALE, x:x + crop.size * SCALE]


def _crop_row(crop: Crop, datasets_dir: Path, upscalers: dict[str, Upscaler]) -> list[np.ndarray]:
    lr = read_image(datasets_dir / crop.path)
    region = lr[crop.y:crop.y + crop.size, crop.x:crop.x + crop.size]
    side = crop.size * SCALE
    cells = [np.repeat(np.repeat(region, SCALE, axis=0), SCALE, axis=1),
             matlab_bicubic(lr)[crop.y * SCALE:crop.y * SCALE + side, crop.x * SCALE:crop.x * SCALE + side]]
    cells += [_upscale_crop(upscale, lr, crop) for upscale in upscalers.values()]
    if crop.hr is not None:
        hr = read_image(datasets_dir / crop.hr)
        cells.append(hr[crop.y * SCALE:crop.y * SCALE + side, crop.x * SCALE:crop.x * SCALE + side])
    return cells


def montage(crops: tuple[Crop, ...], datasets_dir: Path, upscalers: dict[str, Upscaler], with_hr: bool) -> Image.Image:
    """One row per crop: LR (nearest), bicubic, each model[, HR], labelled above the first row."""
    labels = ["LR (nearest)", "bicubic", *upscalers, *(["HR"] if with_hr else [])]
    rows = [_crop_row(crop, datasets_dir, upscalers) for crop in crops]
    side = max(cell.shape[0] for row in rows for cell in row)
    width = len(labels) * (side + GAP) - GAP
    sheet = Image.new("RGB", (width, LABEL_HEIGHT + len(rows) * (side + GAP) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(labels):
        draw.text((column * (side + GAP) + 4, 3), label, fill="black")
    for r, row in enumerate(rows):
        for column, cell in enumerate(row):
            sheet.paste(Image.fromarray(cell), (column * (side + GAP), LABEL_HEIGHT + r * (side + GAP)))
    return sheet


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
        write_section(render_section(_load_results()))
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

    results = _load_results()
    for set_name in sets:
        set_pairs = pairs(settings.datasets_dir, set_name, args.limit)
        for method, (upscale, method_sets) in methods.items():
            if set_name not in method_sets:
                continue
            result = evaluate(upscale, set_pairs)
            print(f"{set_name:7s} {method:22s} PSNR {result.psnr:6.3f}  SSIM {result.ssim:.4f}  "
                  f"{result.images:3d} images  {result.seconds:7.1f} s", flush=True)
            if args.limit is None:
                backend = {} if method in (BICUBIC_MATLAB, BICUBIC_PILLOW) else {"backend": settings.backend}
                results.setdefault(method, {})[set_name] = asdict(result) | backend
                RESULTS_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")

    if args.limit is not None:
        print("--limit given: scores printed only, docs left as they are")
        return 0
    write_section(render_section(results))
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
