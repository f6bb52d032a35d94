"""Output sizes and model passes for every sizing mode, from the input's size alone."""
from __future__ import annotations

import functools
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.errors import InvalidInput
from core.geometry import PassCut, Reach, plan_output
from core.options import UpscaleOptions
from core.pipeline import through_passes
from core.timing import Stages


def plan(input_width: int, input_height: int, native: int = 4, **options):
    return plan_output(input_width, input_height, UpscaleOptions(**options), native)


@pytest.mark.parametrize("size, options, output", [
    ((100, 80), {}, (400, 320)),                       # no option: 4x, as before
    ((100, 80), {"scale": 2}, (200, 160)),
    ((101, 33), {"scale": 1.5}, (152, 50)),            # 151.5 and 49.5 round half up
    ((3, 3), {"scale": 2.5}, (8, 8)),                  # 7.5 -> 8
    ((7, 5), {"scale": 1.1}, (8, 6)),                  # 7.7 -> 8, 5.5 -> 6
    ((10, 10), {"scale": 1}, (10, 10)),
    ((1, 500), {"scale": 3}, (3, 1500)),               # 1 x N
    ((500, 1), {"scale": 8}, (4000, 8)),               # N x 1
    ((1, 1), {"scale": 1.4}, (1, 1)),
])
def test_scale_gives_the_rounded_multiple(size, options, output):
    assert plan(*size, **options).output == output


@pytest.mark.parametrize("size, options, output", [
    ((100, 80), {"width": 250}, (250, 200)),
    ((100, 80), {"height": 100}, (125, 100)),
    ((3, 2), {"width": 10}, (10, 7)),                  # 6.67 -> 7
    ((1, 300), {"height": 900}, (3, 900)),             # 1 x N: the other side follows the ratio
    ((300, 1), {"width": 301}, (301, 1)),              # N x 1: 1.003 rounds to 1
    ((300, 1), {"width": 2400}, (2400, 8)),
])
def test_one_target_side_keeps_the_aspect_ratio(size, options, output):
    assert plan(*size, **options).output == output


def test_both_sides_with_the_inputs_ratio_give_that_size_in_every_fit():
    for fit in ("contain", "cover", "fill"):
        result = plan(100, 80, width=200, height=160, fit=fit)
        assert result.scaled == result.output == (200, 160) and result.crop == (0, 0, 200, 160)


def test_cover_crops_the_centre_to_exactly_the_box():
    result = plan(100, 80, width=200, height=200, fit="cover")
    assert result.scaled == (250, 200) and result.crop == (25, 0, 225, 200) and result.output == (200, 200)


def test_contain_keeps_the_ratio_inside_the_box():
    assert plan(100, 80, width=400, height=200, fit="contain").output == (250, 200)
    assert plan(80, 100, width=400, height=200, fit="contain").output == (160, 200)
    assert plan(1, 400, width=50, height=800, fit="contain").output == (2, 800)


def test_fill_stretches_each_side_on_its_own():
    result = plan(100, 80, width=300, height=100, fit="fill")
    assert result.output == result.scaled == (300, 100)


def test_up_to_the_native_scale_one_pass():
    for scale in (1, 1.5, 2, 3, 4):
        assert plan(50, 40, scale=scale).pass_inputs == ((50, 40),)


def test_above_the_native_scale_a_second_pass_on_the_first_result_resized():
    result = plan(50, 40, scale=8)
    # pass 2 sees the first result brought to (target / 4), so it lands exactly on 400 x 320
    assert result.pass_inputs == ((50, 40), (100, 80)) and result.pass_outputs == ((200, 160), (400, 320))
    odd = plan(33, 7, scale=5)
    assert odd.output == (165, 35)
    assert odd.pass_inputs == ((33, 7), (42, 9)) and odd.pass_outputs[-1] == (168, 36)  # then Lanczos to 165x35


def test_a_2x_network_takes_three_passes_for_8x():
    assert plan(10, 10, native=2, scale=8).pass_inputs == ((10, 10), (20, 20), (40, 40))


@pytest.mark.parametrize("native, options", [
    (4, {"width": 400, "height": 40, "fit": "fill"}),   # 8 x 1: the second pass is for the width alone
    (4, {"width": 250, "height": 100, "fit": "fill"}),  # 5 x 2.5
    (2, {"width": 320, "height": 60, "fit": "fill"}),   # 8 x 1.5 on a 2x network: three passes
])
def test_no_later_pass_sees_fewer_pixels_than_the_input_along_either_side(native, options):
    """Fill enlarges each side on its own: a side enlarged less than the passes reach is resized down to the
    next pass, but never below the input's own pixels, whose detail would be lost for good."""
    result = plan(50, 40, native=native, **options)
    assert len(result.pass_inputs) > 1
    for width, height in result.pass_inputs[1:]:
        assert width >= 50 and height >= 40, result.pass_inputs


@pytest.mark.parametrize("options, fragments", [
    ({"width": 99}, ["width 99", "100x80", "0.99 times", "from 1 to 8"]),
    ({"height": 700}, ["height 700", "8.75 times"]),
    ({"width": 900, "height": 100, "fit": "fill"}, ["width 900 and height 100", "9 x 1.25 times"]),
    ({"width": 50, "height": 50}, ["0.5 times"]),  # contain: the smaller factor
])
def test_a_target_outside_1_to_8_times_is_400_naming_it(options, fragments):
    with pytest.raises(InvalidInput) as raised:
        plan(100, 80, **options)
    assert all(fragment in raised.value.message for fragment in fragments), raised.value.message


@pytest.mark.parametrize("size, scale, output", [
    ((50, 50), 1.13, (57, 57)),      # 56.5 exactly, but 56.49999999999999 in binary floats
    ((150, 2), 1.13, (170, 2)),      # 169.5
    ((1750, 3), 1.13, (1978, 3)),    # 1977.5
])
def test_scale_rounds_the_exact_decimal_product_half_up(size, scale, output):
    assert plan(*size, scale=scale).output == output


def _half_up(numerator: int, denominator: int) -> int:
    """⌊numerator / denominator + ½⌋ in integers: the rounding docs/inputs.md promises, never below 1."""
    return max(1, (2 * numerator + denominator) // (2 * denominator))


SIDES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 7, 13, 97, 101, 499, 1999, 2000]))
NATIVE = st.sampled_from([2, 3, 4, 8])


@settings(max_examples=500, deadline=None)
@given(width=SIDES, height=SIDES, hundredths=st.integers(100, 800), native=NATIVE)
def test_any_scale_gives_round_half_up_of_each_side_times_the_decimal_sent(width, height, hundredths, native):
    result = plan(width, height, native=native, scale=float(f"{hundredths / 100:.2f}"))
    assert result.output == result.scaled == (_half_up(width * hundredths, 100), _half_up(height * hundredths, 100))
    _assert_passes_reach_the_output(result)


@settings(max_examples=500, deadline=None)
@given(width=SIDES, height=SIDES, target=st.integers(1, 16000), side=st.sampled_from(["width", "height"]),
       native=NATIVE)
def test_one_target_side_gives_it_and_the_other_by_the_ratio_or_a_400_naming_the_range(width, height, target, side,
                                                                                      native):
    along, across = (width, height) if side == "width" else (height, width)
    if not along <= target <= 8 * along:
        _assert_refused_outside_the_range(width, height, native, {side: target})
        return
    result = plan(width, height, native=native, **{side: target})
    expected = (target, _half_up(across * target, along))
    assert result.output == (expected if side == "width" else expected[::-1])
    _assert_passes_reach_the_output(result)


@settings(max_examples=1000, deadline=None)
@given(width=SIDES, height=SIDES, box_width=st.integers(1, 16000), box_height=st.integers(1, 16000),
       fit=st.sampled_from(["contain", "cover", "fill"]), native=NATIVE)
def test_both_target_sides_give_the_size_each_fit_promises_or_a_400(width, height, box_width, box_height, fit, native):
    factors = (box_width / width, box_height / height)
    asked = {"contain": (min(factors),), "cover": (max(factors),), "fill": factors}[fit]
    options = {"width": box_width, "height": box_height, "fit": fit}
    if not all(1 <= factor <= 8 for factor in asked):
        _assert_refused_outside_the_range(width, height, native, options)
        return
    result = plan(width, height, native=native, **options)
    out_width, out_height = result.output
    if fit == "contain":
        assert out_width <= box_width and out_height <= box_height
        assert (out_width, out_height) in ((box_width, _half_up(height * box_width, width)),
                                           (_half_up(width * box_height, height), box_height))
    else:
        assert result.output == (box_width, box_height)
    left, top, right, bottom = result.crop
    scaled_width, scaled_height = result.scaled
    assert 0 <= left <= right <= scaled_width and 0 <= top <= bottom <= scaled_height
    # cover's crop is centred: it leaves as much on each side, or one pixel more on the right or bottom
    assert 0 <= (scaled_width - right) - left <= 1 and 0 <= (scaled_height - bottom) - top <= 1
    _assert_passes_reach_the_output(result)


def _assert_passes_reach_the_output(result) -> None:
    """The fewest passes; each runs on at least the input's pixels along each side, on no more than the previous
    pass made (a Lanczos enlargement before the network would be wasted), and the last reaches the size asked."""
    width, height = result.input
    enlargement = max(result.scaled[0] / width, result.scaled[1] / height)
    assert 1 <= enlargement <= 8
    assert result.native_scale ** (len(result.pass_inputs) - 1) < enlargement or len(result.pass_inputs) == 1
    made = None
    for (pass_width, pass_height), pass_output in zip(result.pass_inputs, result.pass_outputs):
        assert pass_width >= width and pass_height >= height
        if made is not None:
            assert pass_width <= made[0] and pass_height <= made[1]
        made = pass_output
    assert made[0] >= result.scaled[0] and made[1] >= result.scaled[1]


def _assert_refused_outside_the_range(width: int, height: int, native: int, options: dict) -> None:
    with pytest.raises(InvalidInput) as raised:
        plan(width, height, native=native, **options)
    message = raised.value.message
    assert f"the {width}x{height} image" in message and "from 1 to 8 times" in message, message
    shown = re.search(r"image (\S+(?: x \S+)?) times", message).group(1).split(" x ")
    assert any(not 1 <= float(factor) <= 8 for factor in shown), message


@pytest.mark.parametrize("size, options, shown", [
    ((1000, 80), {"width": 8001}, "8.001 times"),
    ((1999, 80), {"width": 15993}, "8.001 times"),       # 8.0005...: "8" would read as allowed
    ((2000, 80), {"width": 1999, "height": 500, "fit": "fill"}, "0.9995 x 6.25 times"),
])
def test_a_refused_factor_is_shown_with_the_digits_that_put_it_outside_the_range(size, options, shown):
    with pytest.raises(InvalidInput) as raised:
        plan(*size, **options)
    assert shown in raised.value.message, raised.value.message


# --- cover cuts the input first ------------------------------------------------------------------


def test_cover_runs_each_pass_on_the_part_the_box_needs_with_the_networks_margin():
    """2000 x 100 into 400 x 400: enlarged 4x to 8000 x 400, of which the centre 400 is kept; the 4x network
    needs the 100 input columns under it and its margin of 16 on each side, not the 2000."""
    result = plan_output(2000, 100, UpscaleOptions(width=400, height=400, fit="cover"), 4, Reach(16))
    assert result.scaled == (8000, 400) and result.crop == (3800, 0, 4200, 400) and result.output == (400, 400)
    assert result.cuts == (PassCut((2000, 100), (934, 0, 1066, 100)),)
    assert result.pass_inputs == ((132, 100),) and result.pass_outputs == ((528, 400),) and result.is_cut


def test_a_cut_starts_where_the_networks_tiles_may_start():
    result = plan_output(2000, 100, UpscaleOptions(width=400, height=400, fit="cover"), 4, Reach(16, alignment=4))
    assert result.cuts[0].box[0] % 4 == 0 and result.cuts[0].box[0] <= 934


def test_without_a_reach_or_but_for_cover_every_pass_runs_on_the_whole():
    whole = plan_output(2000, 100, UpscaleOptions(width=400, height=400, fit="cover"), 4)
    assert whole.pass_inputs == ((2000, 100),) and not whole.is_cut
    contained = plan_output(2000, 100, UpscaleOptions(width=8000, height=8000), 4, Reach(16))
    assert contained.pass_inputs == ((2000, 100),) and not contained.is_cut


def _local_network(pixels: np.ndarray, native: int, radius: int) -> np.ndarray:
    """A network whose every output pixel reads ``radius`` input pixels around it (a mean, the image's edge
    repeated past it), enlarged by repetition: a cut with that margin must make exactly the same pixels."""
    padded = np.pad(pixels.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    mean = sum(padded[dy:dy + height, dx:dx + width] for dy in range(2 * radius + 1) for dx in range(2 * radius + 1))
    levels = np.rint(mean / (2 * radius + 1) ** 2).astype(pixels.dtype)
    return levels.repeat(native, axis=0).repeat(native, axis=1)


@settings(max_examples=150, deadline=None)
@given(width=st.integers(1, 90), height=st.integers(1, 90), box_width=st.integers(1, 300),
       box_height=st.integers(1, 300), native=NATIVE, radius=st.integers(0, 3), alignment=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_the_cut_passes_make_the_very_pixels_of_the_whole_enlargement_cut(width, height, box_width, box_height,
                                                                          native, radius, alignment, seed):
    """Through every resample between the passes and to the box, with every pass's margin: the cover cut first is
    the whole enlargement's centre, pixel for pixel, for a network that reads no further than its margin. In 16
    bits, to within a few of the 65535 levels: Pillow places a cut's kernels by the box's floats, which can turn
    a tie at .5 the other way, and a later pass enlarges that level; a kernel or margin short of what it reads
    would be off by thousands."""
    options = UpscaleOptions(width=box_width, height=box_height, fit="cover")
    assume(1 <= max(box_width / width, box_height / height) <= 8)
    image = np.random.default_rng(seed).integers(0, 65536, (height, width, 3), np.uint16)
    network = functools.partial(_local_network, native=native, radius=radius)
    cut = plan_output(width, height, options, native, Reach(radius, alignment))
    whole = plan_output(width, height, options, native)
    left, top, right, bottom = whole.crop
    enlarged = through_passes(image, replace(whole, crop=(0, 0, *whole.scaled)), network, Stages())
    made = through_passes(image, cut, network, Stages()).astype(int)
    assert made.shape == enlarged[top:bottom, left:right].shape
    assert np.abs(made - enlarged[top:bottom, left:right]).max(initial=0) <= 8
