"""The quality section of docs/benchmarks.md, drawn from docs/quality-results.json."""
from __future__ import annotations

import json

from bench.montage import MONTAGE_FILE, REALSR_MONTAGE_FILE
from core.models.specs import PACKAGED
from harness.evaluation import RESULTS_FILE

SETS = ("Set5", "Set14", "BSD100")
MODELS = PACKAGED
BICUBIC_MATLAB, BICUBIC_PILLOW = "bicubic-matlab", "bicubic-pillow"
ENSEMBLE_SUFFIX = "+ensemble"


# Published 4x PSNR / SSIM, for the comparison rows (Ledig et al., CVPR 2017, table 4; and the
# original MAX model's README, which does not say how it measured).
PUBLISHED: dict[str, dict[str, str]] = {
    "SRResNet, Ledig et al. 2017 (published)": {"Set5": "32.05 / 0.9019", "Set14": "28.49 / 0.8184", "BSD100": "27.58 / 0.7620"},
    "SRGAN, Ledig et al. 2017 (published)": {"Set5": "29.40 / 0.8472", "Set14": "26.02 / 0.7397", "BSD100": "25.16 / 0.6688"},
    "Original MAX model (its README's claims)": {"Set5": "29.56 / 0.85", "Set14": "26.25 / 0.72", "BSD100": "24.4 / 0.67"},
}


def load_results() -> dict[str, dict[str, dict[str, float]]]:
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
