"""A model's networks by native scale and denoise level, and which of them an asked enlargement runs."""
from __future__ import annotations

from collections.abc import Iterable

from core.errors import InvalidInput

# The denoise option's values, weakest first; a model offers some of them at each of its scales.
DENOISE_LEVELS = ("none", "conservative", "1", "2", "3")
NO_DENOISE = DENOISE_LEVELS[0]

Key = tuple[int, str]  # a network of a model: (native scale, denoise level)


def choose(model: str, keys: Iterable[Key], scale: float, denoise: str) -> Key:
    """The network for an asked enlargement and denoise level, at the ``native_scale`` that runs it; 400 for a level
    the model lacks at that scale."""
    keys = set(keys)
    native = native_scale(keys, scale)
    if (native, denoise) in keys:
        return native, denoise
    raise InvalidInput(f"model {model!r} has no denoise level {denoise!r} at scale {scale:g} "
                       f"(it runs its {native}x network); its levels there: {', '.join(levels_at(keys, native))}")


def native_scale(keys: Iterable[Key], scale: float) -> int:
    """The native scale that runs an asked enlargement: the smallest that reaches ``scale``, the largest where none
    does."""
    scales = sorted({native for native, _ in keys})
    return next((native for native in scales if native >= scale), scales[-1])


def levels_for(keys: Iterable[Key], scale: float) -> tuple[str, ...]:
    """The denoise levels offered for an asked enlargement: those at the native scale that runs it."""
    keys = set(keys)
    return levels_at(keys, native_scale(keys, scale))


def levels_at(keys: Iterable[Key], scale: int) -> tuple[str, ...]:
    """The denoise levels among ``keys`` at a native scale, in DENOISE_LEVELS order."""
    present = {level for native, level in keys if native == scale}
    return tuple(level for level in DENOISE_LEVELS if level in present)


def all_levels(keys: Iterable[Key]) -> tuple[str, ...]:
    """The denoise levels among ``keys`` at any scale, ``none`` always among them."""
    present = {level for _, level in keys} | {NO_DENOISE}
    return tuple(level for level in DENOISE_LEVELS if level in present)


def describe_scales(keys: Iterable[Key]) -> dict[str, object]:
    """A model's native scales and its denoise levels at each, for /model/metadata."""
    keys = set(keys)
    scales = sorted({native for native, _ in keys})
    return {"scales": scales, "denoise": {str(scale): list(levels_at(keys, scale)) for scale in scales}}
