"""Tiles sized from the worker's memory budget (``MEMORY_BUDGET_MB``).

A worker's peak RSS is what it holds anyway (TensorFlow, OpenVINO and the loaded models: its
*resident* size, read once the models are loaded), plus the buffers of the request being served
(decoded input, float input, output, the encoder's copy and the encoded bytes), plus the network's
working set on one window, which grows with the window's pixels. Each model's bytes per window pixel
are measured (``python -m bench.memory windows``, docs/speed.md) and kept in its spec; the tile is
the largest whose window fits what is left. Only one model's windows count: after each request the
backend gives its buffers back (``Network.release_memory``).
"""
from __future__ import annotations

import math
import os

from core.errors import TooLarge
from core.tiling import WINDOW_QUANTUM

MEBIBYTE = 1024 * 1024
# The resident size is rounded up to this, so that a few MB of difference between two workers'
# start-ups rarely gives them different tiles (and so slightly different results) for one image.
RESIDENT_QUANTUM = 32 * MEBIBYTE
# A request's own buffers per input and per output pixel, whatever the model: decoded and float input;
# the output, the encoder's copy of it (alpha joined in, or Pillow's for JPEG and WebP), the encoded
# bytes and their copies on the way out. `python -m bench.memory request` measures the core's share
# (docs/speed.md); these leave room for HTTP's copies of the upload and of the response.
REQUEST_BYTES_PER_INPUT_PIXEL = 24
REQUEST_BYTES_PER_OUTPUT_PIXEL = 10
MIN_TILE = 16
# The windows' bytes per pixel are measured up to 384-px windows and still grow there (the backend's
# buffers do not scale evenly): a larger window would be sized by a figure nobody measured, and a worker
# serving anime at 1000² went 100 MiB past its budget with windows of the whole image.
MAX_WINDOW = 384


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident_estimate(rss: int) -> int:
    return -(-rss // RESIDENT_QUANTUM) * RESIDENT_QUANTUM


def request_bytes(height: int, width: int, scale: int) -> int:
    """What a request for an image of this size holds outside the network (any channel count)."""
    pixels = height * width
    return pixels * REQUEST_BYTES_PER_INPUT_PIXEL + pixels * scale * scale * REQUEST_BYTES_PER_OUTPUT_PIXEL


def largest_window(available_bytes: int, bytes_per_window_pixel: int) -> int:
    """The side of the largest square window, a multiple of the tiler's quantum, that fits."""
    if available_bytes <= 0:
        return 0
    side = math.isqrt(available_bytes // bytes_per_window_pixel)
    return side // WINDOW_QUANTUM * WINDOW_QUANTUM


def tile_for_budget(budget_bytes: int, resident: int, bytes_per_window_pixel: int, margin: int,
                    height: int, width: int, scale: int, batch: int = 1) -> int:
    """The tile side for this image and model within the budget; 413 when not even the smallest fits."""
    available = budget_bytes - resident - request_bytes(height, width, scale)
    window = min(largest_window(available // batch, bytes_per_window_pixel), MAX_WINDOW)
    tile = window - 2 * margin
    if tile < MIN_TILE:
        raise TooLarge(
            f"a {width}x{height} image needs more memory than this worker's MEMORY_BUDGET_MB="
            f"{budget_bytes // MEBIBYTE} leaves: {resident // MEBIBYTE} MiB are the loaded models, "
            f"{request_bytes(height, width, scale) // MEBIBYTE} MiB this image's buffers, and the smallest "
            f"tile's window needs {(MIN_TILE + 2 * margin) ** 2 * bytes_per_window_pixel * batch // MEBIBYTE} MiB")
    return tile


def tile_for_device_budget(budget_bytes: int, resident: int, bytes_per_window_pixel: int, margin: int,
                           height: int, width: int, batch: int = 1) -> int:
    """The tile side on a GPU: the whole image as one window where it fits what the budget leaves beside the
    loaded models (no margins recomputed), else the largest square window that does; 413 below MIN_TILE.

    The request's own buffers stay on the host, so only the window counts here, with no cap: the GPU's
    figures were measured on whole 500² windows."""
    available = (budget_bytes - resident) // batch
    if height * width * bytes_per_window_pixel <= available:
        return max(height, width)
    tile = largest_window(available, bytes_per_window_pixel) - 2 * margin
    if tile < MIN_TILE:
        raise TooLarge(
            f"a {width}x{height} image needs more GPU memory than GPU_MEMORY_BUDGET_MB={budget_bytes // MEBIBYTE} "
            f"leaves: {resident // MEBIBYTE} MiB are the loaded models, and the smallest tile's window needs "
            f"{(MIN_TILE + 2 * margin) ** 2 * bytes_per_window_pixel * batch // MEBIBYTE} MiB")
    return tile
