"""Output sizes and model passes for every sizing mode, from the input's size alone."""
from __future__ import annotations

import pytest

from core.errors import InvalidInput
from core.geometry import plan_output
from core.options import UpscaleOptions


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
