"""The output's size from the options and the input's size, and the model passes that reach it.

Everything here is known from the image's size alone, so every limit is checked before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from core.errors import InvalidInput
from core.options import BY_NAME, DEFAULT_SCALE, UpscaleOptions

Size = tuple[int, int]  # (width, height)
Box = tuple[int, int, int, int]  # (left, top, right, bottom)
MIN_SCALE = float(BY_NAME["scale"].minimum)
MAX_SCALE = float(BY_NAME["scale"].maximum)
# Input pixels Pillow's LANCZOS reads on each side of an output pixel's centre (times the reduction, where it
# shrinks): what a resample needs around the part it makes.
LANCZOS_SUPPORT = 3


@dataclass(frozen=True)
class Reach:
    """What the network reads around the pixels it makes: ``margin`` input pixels on each side (as tiles give
    it), from a cut that starts at a multiple of ``alignment`` (as tiles do)."""

    margin: int
    alignment: int = 1


@dataclass(frozen=True)
class PassCut:
    """One pass's input: the size it has were the whole image enlarged, and the part of it the network runs on."""

    whole: Size
    box: Box

    @property
    def size(self) -> Size:
        left, top, right, bottom = self.box
        return right - left, bottom - top


@dataclass(frozen=True)
class OutputPlan:
    input: Size
    scaled: Size                  # the input enlarged to this size ...
    crop: Box                     # ... then cut to this box (the whole of it but for cover, which makes the box alone)
    # Each pass's input, and the part of it the network runs on: for cover, only what the box needs, with the
    # network's and the resamples' context; nothing larger than that part is ever made.
    cuts: tuple[PassCut, ...]
    native_scale: int

    @property
    def output(self) -> Size:
        left, top, right, bottom = self.crop
        return right - left, bottom - top

    @property
    def pass_inputs(self) -> tuple[Size, ...]:
        """The size the network sees in each pass."""
        return tuple(cut.size for cut in self.cuts)

    @property
    def is_cut(self) -> bool:
        """Whether the network runs on part of its input only."""
        return any(cut.box != (0, 0, *cut.whole) for cut in self.cuts)

    @property
    def pass_outputs(self) -> tuple[Size, ...]:
        return tuple((w * self.native_scale, h * self.native_scale) for w, h in self.pass_inputs)


def round_half_up(value: Fraction) -> int:
    """⌊value + ½⌋, as docs/inputs.md promises (Python's round() goes to even at .5), on the exact value: in
    binary floats 50 x 1.13 is 56.49999999999999, which would round to 56, not 57."""
    return math.floor(value + Fraction(1, 2))


def _times(length: int, factor: Fraction) -> int:
    """``length`` x ``factor`` rounded half up, never below 1."""
    return max(1, round_half_up(length * factor))


def _as_sent(value: float) -> Fraction:
    """A number option as the decimal it was sent as (the float's shortest spelling, which parses back to it):
    1.13, not the binary 1.12999999999999989..."""
    return Fraction(repr(value))


def plan_output(width: int, height: int, options: UpscaleOptions, native_scale: int,
                reach: Reach | None = None) -> OutputPlan:
    """The sizes for an input of ``width`` x ``height``; 400 when the options ask for less than 1x or more than 8x.

    With the network's ``reach``, each pass runs on the part of its input that the crop needs; without it
    (a network whose averages are the whole image's), on the whole."""
    _check_factors(width, height, options, _asked_factors(width, height, options))
    scaled, crop = _scaled_and_crop(width, height, options)
    made = enlargement(width, height, options)
    wholes = _pass_inputs((width, height), scaled, made, native_scale)
    boxes = ([(0, 0, *whole) for whole in wholes] if reach is None else
             _pass_boxes(wholes, scaled, crop, native_scale, reach))
    return OutputPlan((width, height), scaled, crop,
                      tuple(PassCut(whole, box) for whole, box in zip(wholes, boxes)), native_scale)


def enlargement(width: int, height: int, options: UpscaleOptions) -> float:
    """How many times the model must enlarge the input (the larger side's factor): what picks its native scale."""
    scaled, _ = _scaled_and_crop(width, height, options)
    return max(scaled[0] / width, scaled[1] / height)


def _scaled_and_crop(width: int, height: int, options: UpscaleOptions) -> tuple[Size, tuple[int, int, int, int]]:
    if not options.target:
        scale = DEFAULT_SCALE if options.scale is None else options.scale
        scaled = (_times(width, _as_sent(scale)), _times(height, _as_sent(scale)))
    elif options.height is None:
        scaled = (options.width, _times(height, Fraction(options.width, width)))
    elif options.width is None:
        scaled = (_times(width, Fraction(options.height, height)), options.height)
    elif options.fit == "fill":
        scaled = (options.width, options.height)
    else:
        scaled = _fitted(width, height, options.width, options.height, cover=options.fit == "cover")
    if options.fit == "cover" and options.width is not None and options.height is not None:
        left, top = (scaled[0] - options.width) // 2, (scaled[1] - options.height) // 2
        return scaled, (left, top, left + options.width, top + options.height)
    return scaled, (0, 0, *scaled)


def _fitted(width: int, height: int, box_width: int, box_height: int, cover: bool) -> Size:
    """The input's aspect ratio, inside the box (contain) or around it (cover); one side equals the box's."""
    width_decides = (box_width / width <= box_height / height) != cover
    if width_decides:
        return box_width, _times(height, Fraction(box_width, width))
    return _times(width, Fraction(box_height, height)), box_height


def _asked_factors(width: int, height: int, options: UpscaleOptions) -> tuple[float, ...]:
    """The enlargement the options ask for, before any rounding: one factor, or one a side for fill."""
    if not options.target:
        return (DEFAULT_SCALE if options.scale is None else options.scale,)
    if options.height is None:
        return (options.width / width,)
    if options.width is None:
        return (options.height / height,)
    factors = (options.width / width, options.height / height)
    if options.fit == "fill":
        return factors
    return (max(factors) if options.fit == "cover" else min(factors),)


def _check_factors(width: int, height: int, options: UpscaleOptions, factors: tuple[float, ...]) -> None:
    """A target size is checked against the same range as scale, once the input's size is known."""
    if all(MIN_SCALE <= factor <= MAX_SCALE for factor in factors):
        return
    asked = (f"scale {options.scale:g}" if not options.target else
             " and ".join(f"{name} {getattr(options, name)}" for name in ("width", "height")
                          if getattr(options, name) is not None))
    shown = " x ".join(_shown(factor) for factor in factors)
    raise InvalidInput(f"{asked} would enlarge the {width}x{height} image {shown} times; "
                       f"the enlargement must be from {MIN_SCALE:g} to {MAX_SCALE:g} times (as for scale)")


def _shown(factor: float) -> str:
    """``factor`` to 3 significant digits, or as many more as keep it on its side of the range: 8.001 times shown as
    "8" would read as allowed."""
    inside = MIN_SCALE <= factor <= MAX_SCALE
    for digits in range(3, 17):
        shown = f"{factor:.{digits}g}"
        if (MIN_SCALE <= float(shown) <= MAX_SCALE) == inside:
            return shown
    return repr(factor)


def _pass_inputs(size: Size, scaled: Size, factor: float, native_scale: int) -> tuple[Size, ...]:
    """One pass up to the native scale; above it, each further pass runs on the previous result,
    first resized so that the last pass lands just above the asked size (a pass then costs about the
    asked size's pixels, not native_scale**2 times the input's).

    A side enlarged less than the other (fill) is never resized below the input's own length on the way:
    the detail lost there would not come back."""
    passes = 1
    while native_scale ** passes < factor - 1e-9:
        passes += 1
    later = tuple(tuple(max(length, math.ceil(target / native_scale ** remaining))
                        for length, target in zip(size, scaled))
                  for remaining in range(passes - 1, 0, -1))
    return (size, *later)


def _pass_boxes(wholes: tuple[Size, ...], scaled: Size, crop: Box, native_scale: int, reach: Reach) -> list[Box]:
    """The part of each pass's input that the ``crop`` of the ``scaled`` image needs, found backwards from it:
    through each Lanczos resample (its kernel's support) and each pass of the network (its margin)."""
    boxes = []
    needed, target = crop, scaled
    for whole in reversed(wholes):
        made = (whole[0] * native_scale, whole[1] * native_scale)
        read = _lanczos_source(needed, target, made)
        needed = _network_source(read, native_scale, reach, whole)
        boxes.append(needed)
        target = whole
    return boxes[::-1]


def _lanczos_source(box: Box, size: Size, source: Size) -> Box:
    """The pixels of an image of ``source`` size that Lanczos reads to make the ``box`` of it resized to ``size``
    (the box itself where the sizes are equal: no resample runs)."""
    left, right = _lanczos_span(box[0], box[2], size[0], source[0])
    top, bottom = _lanczos_span(box[1], box[3], size[1], source[1])
    return left, top, right, bottom


def _lanczos_span(start: int, end: int, length: int, source: int) -> tuple[int, int]:
    if length == source:
        return start, end
    step = source / length
    support = LANCZOS_SUPPORT * max(step, 1.0)
    # Pillow reads from the centre's ± support; one pixel more on each side covers its rounding
    return (max(0, math.floor((start + 0.5) * step - support) - 1),
            min(source, math.ceil((end - 0.5) * step + support) + 1))


def _network_source(box: Box, native_scale: int, reach: Reach, whole: Size) -> Box:
    """The network's input that makes the ``box`` of its output with ``reach``'s context, within ``whole``."""
    left, right = _network_span(box[0], box[2], native_scale, reach, whole[0])
    top, bottom = _network_span(box[1], box[3], native_scale, reach, whole[1])
    return left, top, right, bottom


def _network_span(start: int, end: int, native_scale: int, reach: Reach, length: int) -> tuple[int, int]:
    first = max(0, start // native_scale - reach.margin) // reach.alignment * reach.alignment
    return first, min(length, -(-end // native_scale) + reach.margin)
