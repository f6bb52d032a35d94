"""Tile geometry, and tiled results equal to whole-image results (no seams)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.tiling import WINDOW_QUANTUM, plan_axis, plan_tiles, run_tiled, run_tiles
from tests.conftest import SAMPLES

LENGTHS = [1, 15, 16, 47, 48, 49, 63, 64, 65, 100, 127, 128, 129, 250, 333, 500, 1000, 2000]
GEOMETRIES = [(16, 0), (32, 8), (64, 16), (128, 16), (240, 16), (256, 8)]
SEAM_TILE = 32  # small tiles force many seams even on Set14's ~128 px inputs
SEAM_IMAGES = ("baboonx4.png", "monarchx4.png", "zebrax4.png")


@pytest.mark.parametrize("align", [1, 2, 4])
@pytest.mark.parametrize("tile,margin", GEOMETRIES)
@pytest.mark.parametrize("length", LENGTHS)
def test_plan_axis_covers_every_pixel_once_with_context(length, tile, margin, align):
    spans = plan_axis(length, tile, margin, align=align)
    assert len({span.window_size for span in spans}) == 1
    assert all(span.window_start % align == 0 for span in spans)
    covered = np.zeros(length, int)
    for span in spans:
        covered[span.core_start:span.core_start + span.core_size] += 1
        assert 0 <= span.window_start and span.window_start + span.window_size <= length
        # context on each side: the margin, or the image's edge (where the network pads)
        assert span.core_start - span.window_start >= min(margin, span.core_start)
        core_end = span.core_start + span.core_size
        assert span.window_start + span.window_size - core_end >= min(margin, length - core_end)
    assert covered.tolist() == [1] * length


@pytest.mark.parametrize("tile,margin", GEOMETRIES)
@pytest.mark.parametrize("length", LENGTHS)
def test_plan_axis_uses_one_small_window(length, tile, margin):
    spans = plan_axis(length, tile, margin)
    windows = {span.window_size for span in spans}
    assert len(windows) == 1
    window = windows.pop()
    if len(spans) > 1:
        assert window % WINDOW_QUANTUM == 0 or window == length
        assert window <= tile + 2 * margin + WINDOW_QUANTUM - 1
        # an edge core also owns the strip where no context is needed
        assert all(span.core_size <= tile for span in spans[1:-1])
        assert max(span.core_size for span in spans) <= tile + margin
    else:
        assert window == length <= tile + 2 * margin


@pytest.mark.parametrize("align", [2, 4])
@pytest.mark.parametrize("tile,margin", [(216, 20), (344, 20), (176, 20), (100, 16), (16, 20)])
def test_aligned_windows_stay_within_the_window_the_tile_stands_for(tile, margin, align):
    """The memory budget sizes a window of tile + 2 x margin (a multiple of the quantum): an aligned network's
    windows must not come out a quantum larger (or a few pixels, to end with the image)."""
    limit = -(-(tile + 2 * margin) // WINDOW_QUANTUM) * WINDOW_QUANTUM
    for length in range(1, 1600):
        spans = plan_axis(length, tile, margin, align=align)
        assert spans[0].window_size <= limit, f"length {length}"


@pytest.mark.parametrize("align", [2, 4])
@pytest.mark.parametrize("tile,margin", [(216, 20), (344, 20), (16, 20), (100, 16)])
def test_aligned_windows_cost_at_most_one_core_more_than_unaligned(tile, margin, align):
    """Kept within the tile's window, an aligned axis is cut into at most one more core than an unaligned one."""
    for length in range(1, 1600):
        assert len(plan_axis(length, tile, margin, align=align)) <= len(plan_axis(length, tile, margin)) + 1


def test_plan_tiles_share_one_window_shape():
    tiles = plan_tiles(333, 500, 128, 16)
    assert len(tiles) == len(plan_axis(333, 128, 16)) * len(plan_axis(500, 128, 16))
    assert len({t.window_shape for t in tiles}) == 1


def test_plan_axis_recomputes_little_overlap():
    # 500 px with 240 px tiles: two windows of 272 (500 + 2 * 16 context, rounded to 16)
    spans = plan_axis(500, 240, 16)
    assert [s.window_size for s in spans] == [272, 272]
    assert sum(s.core_size for s in spans) == 500


def test_run_tiled_writes_every_core_in_batches():
    image = np.random.default_rng(0).random((70, 90, 3), np.float32)
    out = np.full((140, 180, 3), -1.0, np.float32)
    batch_sizes, progress = [], []

    def predict(batch):
        batch_sizes.append(len(batch))
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    def write(y, x, block):
        out[y:y + block.shape[0], x:x + block.shape[1]] = block

    run_tiled(predict, image, 2, 32, 4, 3, write, lambda done, total: progress.append((done, total)))
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))
    total = len(plan_tiles(70, 90, 32, 4))
    assert progress[-1] == (total, total) and max(batch_sizes) == 3


def _photos(datasets_dir: Path | None) -> list[Path]:
    if datasets_dir is not None and (datasets_dir / "Set14").is_dir():
        return [datasets_dir / "Set14" / "LR_bicubic" / "X4" / name for name in SEAM_IMAGES]
    return [SAMPLES / name for name in ("astronaut.png", "coffee.png", "rocket.png")]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _to_levels(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["srgan", "srresnet"])
def test_tiled_equals_whole_image_on_photos(service, settings, model):
    network = service.registry.get(model)
    datasets = settings.datasets_dir if (settings.datasets_dir / "Set14").is_dir() else None
    for path in _photos(datasets):
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        whole = _to_levels(network.predict(image[None])[0])
        tiled = np.zeros_like(whole)

        def write(y, x, block, tiled=tiled):
            tiled[y:y + block.shape[0], x:x + block.shape[1]] = _to_levels(block)

        run_tiled(network.predict, image, network.scale, SEAM_TILE, network.margin, 4, write)
        assert len(plan_tiles(*image.shape[:2], SEAM_TILE, network.margin)) >= 4
        assert _psnr(tiled, whole) >= 45, f"{path.name}: tiled differs from whole image"


@settings(max_examples=3000, deadline=None)
@given(length=st.one_of(st.integers(1, 80), st.integers(1, 4000)), tile=st.one_of(st.integers(1, 40), st.integers(1, 600)),
       margin=st.integers(0, 40), align=st.sampled_from([1, 2, 4, 8, 16]))
def test_any_axis_is_covered_once_by_aligned_windows_within_the_image_and_the_tiles_window(length, tile, margin,
                                                                                           align):
    spans = plan_axis(length, tile, margin, align=align)
    covered = np.zeros(length, int)
    for span in spans:
        assert span.core_size >= 1 and span.window_start % align == 0
        assert 0 <= span.window_start <= span.core_start
        core_end = span.core_start + span.core_size
        assert core_end <= span.window_start + span.window_size <= length
        assert span.core_start - span.window_start >= min(margin, span.core_start)
        assert span.window_start + span.window_size - core_end >= min(margin, length - core_end)
        covered[span.core_start:core_end] += 1
    assert covered.tolist() == [1] * length and len({span.window_size for span in spans}) == 1
    limit = -(-(tile + 2 * margin) // WINDOW_QUANTUM) * WINDOW_QUANTUM
    # past the window the tile stands for only where even one-pixel cores' aligned windows are larger
    one_pixel_cores = min(length, 1 + 2 * margin + align - 1)
    assert len(spans) == 1 or spans[0].window_size <= limit or one_pixel_cores > limit - align


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70), tile=st.integers(1, 40), margin=st.integers(0, 12),
       align=st.sampled_from([1, 2, 4]), scale=st.sampled_from([1, 2, 3, 4]), batch_size=st.integers(1, 9))
def test_every_output_pixel_is_written_once_and_the_batch_changes_nothing(height, width, tile, margin, align, scale,
                                                                         batch_size):
    """A predictor that reads every window pixel: an output pixel is right only where its window's core was cut at
    the right place, whatever the batch."""
    image = np.random.default_rng(height * width).random((height, width, 3), np.float32)
    tiles = plan_tiles(height, width, tile, margin, align)
    writes = np.zeros((height * scale, width * scale), int)
    out = np.zeros((height * scale, width * scale, 3), np.float32)

    def predict(windows):
        return windows.repeat(scale, axis=1).repeat(scale, axis=2)

    def write(y, x, block):
        writes[y:y + block.shape[0], x:x + block.shape[1]] += 1
        out[y:y + block.shape[0], x:x + block.shape[1]] = block

    run_tiles(predict, image, scale, tiles, batch_size, write)
    assert (writes == 1).all()
    assert np.array_equal(out, image.repeat(scale, axis=0).repeat(scale, axis=1))


def test_tiled_equals_whole_image_on_a_real_network_whatever_the_batch(service):
    """One small photo (96 x 80) in 16-px tiles (12 windows) through the 4x network, in batches of 1 and of 5: within the
    45 dB the margins are chosen by (docs/deployment.md), and the batch does not move a level."""
    network = service.registry.get("srgan")
    image = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB").crop((20, 30, 116, 110)), np.float32) / 255
    whole = _to_levels(network.predict(image[None])[0])
    results = []
    for batch_size in (1, 5):
        tiled = np.zeros_like(whole)

        def write(y, x, block, tiled=tiled):
            tiled[y:y + block.shape[0], x:x + block.shape[1]] = _to_levels(block)

        run_tiled(network.predict, image, network.scale, 16, network.margin, batch_size, write)
        results.append(tiled)
    assert len(plan_tiles(*image.shape[:2], 16, network.margin)) >= 4
    assert _psnr(results[0], whole) >= 45
    assert np.abs(results[0].astype(int) - results[1].astype(int)).max() <= 1
