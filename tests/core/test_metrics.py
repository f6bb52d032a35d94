"""The metric code pinned against values that follow from the definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import metrics
from harness.bicubic import matlab_bicubic, pillow_bicubic


def grey(values: np.ndarray) -> np.ndarray:
    return metrics.as_rgb(values.astype(np.uint8))


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out window by window with the 2-D Gaussian, as in Wang et al.'s MATLAB code."""
    taps = metrics.gaussian_window(11, 1.5)
    window = np.outer(taps, taps)
    values = []
    for y in range(a.shape[0] - 10):
        for x in range(a.shape[1] - 10):
            pa, pb = a[y:y + 11, x:x + 11], b[y:y + 11, x:x + 11]
            mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
            var_a = (window * (pa - mu_a) ** 2).sum()
            var_b = (window * (pb - mu_b) ** 2).sum()
            cov = (window * (pa - mu_a) * (pb - mu_b)).sum()
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_luma_is_bt601_studio_swing():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(metrics.luma(pixels)[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_grey_is_repeated_into_rgb():
    values = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(metrics.luma(values), 16 + 219 * values.astype(float) / 255)
    np.testing.assert_array_equal(metrics.as_rgb(values[..., None])[..., 2], values)


def test_identical_images_score_infinite_psnr_and_ssim_one():
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    scores = metrics.score(image, image.copy())
    assert scores.psnr == math.inf
    assert scores.ssim == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_the_psnr_of_its_luma_difference():
    base = np.random.default_rng(1).integers(0, 240, (32, 32))
    scores = metrics.score(grey(base + 5), grey(base))
    assert scores.psnr == pytest.approx(20 * math.log10(255 / (219 * 5 / 255)), abs=1e-9)   # 35.47 dB


def test_ssim_of_two_flat_images_is_its_luminance_term():
    a, b = np.full((20, 20), 100.0), np.full((20, 20), 120.0)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1), abs=1e-12)


def test_one_pixel_shift_of_a_ramp_costs_one_step_everywhere():
    wide = np.tile(np.arange(0, 204, 4), (30, 1))          # +4 grey levels per column
    ramp, shifted = wide[:, :-1], wide[:, 1:]              # the shifted view moved one pixel left
    step = 219 * 4 / 255
    assert metrics.score(grey(shifted), grey(ramp)).psnr == pytest.approx(20 * math.log10(255 / step), abs=1e-9)


def test_one_pixel_shift_of_black_and_white_stripes_swaps_every_pixel():
    stripes = np.tile([0, 255], (30, 16))
    scores = metrics.score(grey(np.roll(stripes, 1, axis=1)), grey(stripes))
    assert scores.psnr == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)   # 1.32 dB
    assert scores.ssim < 0


def test_differences_within_the_border_are_not_counted():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    sr = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    sr[4:-4, 4:-4] = hr[4:-4, 4:-4]
    assert metrics.score(sr, hr, border=4).psnr == math.inf
    assert metrics.score(sr, hr, border=3).psnr < 30


def test_ssim_matches_a_window_by_window_reference_on_random_data():
    rng = np.random.default_rng(3)
    a = rng.uniform(16, 235, (23, 27))
    b = np.clip(a + rng.normal(0, 20, a.shape), 16, 235)
    assert metrics.ssim(a, b) == pytest.approx(reference_ssim(a, b), abs=1e-12)
    assert metrics.ssim(b, a) == pytest.approx(metrics.ssim(a, b), abs=1e-12)
    assert 0 < metrics.ssim(a, b) < 1


def test_ssim_refuses_planes_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((10, 30)), np.zeros((10, 30)))


def test_score_refuses_images_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.score(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 24, 3), np.uint8))


def test_matlab_bicubic_keeps_flat_images_and_matches_pillow_inside():
    flat = np.full((6, 7, 3), 77, np.uint8)
    np.testing.assert_array_equal(matlab_bicubic(flat), np.full((24, 28, 3), 77, np.uint8))
    image = np.random.default_rng(4).integers(60, 190, (12, 10, 3), dtype=np.uint8)   # no clipping
    ours, pillow = matlab_bicubic(image), pillow_bicubic(image)
    assert ours.shape == (48, 40, 3)
    # Same kernel (Keys, a = -0.5); away from the borders only the order of the passes and its rounding differ.
    assert np.abs(ours[8:-8, 8:-8].astype(int) - pillow[8:-8, 8:-8]).max() <= 1
