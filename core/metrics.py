"""PSNR and SSIM as the super-resolution literature measures them.

The protocol (the one behind the usual Set5/Set14/BSD100 tables):

- luma only: ITU-R BT.601 studio-swing Y = 16 + 65.481 R + 128.553 G + 24.966 B with
  R, G, B in [0, 1], as MATLAB's ``rgb2ycbcr``. Y is kept as float64 (as BasicSR does);
  MATLAB rounds it to uint8, which moves scores by a few hundredths of a dB;
- ``scale`` pixels cropped from every side of both images before measuring;
- PSNR = 10 log10(255^2 / MSE);
- SSIM of Wang et al. (2004): 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, statistics over 'valid' windows only (no padding), as MATLAB's ``ssim_index``.

Inputs are uint8 RGB arrays (H, W, 3). A grey image is measured as the RGB image that
repeats its grey value, i.e. Y = 16 + 219 v / 255 (see ``as_rgb``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0
PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * PEAK) ** 2
SSIM_C2 = (0.03 * PEAK) ** 2


@dataclass(frozen=True)
class Scores:
    psnr: float
    ssim: float


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, 3): grey is repeated into R, G and B."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing Y in [16, 235] as float64, from uint8 RGB (grey is repeated first)."""
    return as_rgb(rgb).astype(np.float64) @ Y_WEIGHTS + Y_OFFSET


def shave(plane: np.ndarray, border: int) -> np.ndarray:
    return plane[border:-border, border:-border] if border > 0 else plane


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two same-shaped planes on the 0..255 scale; inf when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian; SSIM's 2-D window is its outer product with itself."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def _filter_valid(plane: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with ``taps`` along both axes, keeping only full windows."""
    size = len(taps)
    rows = sum(taps[i] * plane[i:plane.shape[0] - size + 1 + i] for i in range(size))
    return sum(taps[i] * rows[:, i:rows.shape[1] - size + 1 + i] for i in range(size))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two same-shaped planes on the 0..255 scale (each side must be >= 11)."""
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs planes of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    taps = gaussian_window()
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a ** 2
    var_b = _filter_valid(b * b, taps) - mu_b ** 2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / \
            ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(index.mean())


def score(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> Scores:
    """PSNR and SSIM on Y of uint8 images of one size, ``border`` pixels cropped from each side."""
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"images differ in size: {sr.shape[:2]} vs {hr.shape[:2]}")
    y_sr, y_hr = shave(luma(sr), border), shave(luma(hr), border)
    return Scores(psnr(y_sr, y_hr), ssim(y_sr, y_hr))
