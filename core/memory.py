"""Tiles sized from the worker's memory budget (``MEMORY_BUDGET_MB``).

A worker's peak RSS is what it holds anyway (TensorFlow, OpenVINO and the loaded models: its
*resident* size, read once the models are loaded), plus the buffers of the request being served
(decoded input, float input, output, the encoder's copy and the encoded bytes, the upload itself and the copies
of an ICC profile, which may be nearly as long as the upload and outweigh the pixels), plus the network's
working set on one window, which grows with the window's pixels (for a network with whole-image averages, the larger
of a tile's window and the window they are measured in, which runs alone before the tiles), plus what reading one
upload's header holds (``header_read_bytes``: one at a time, before its request's share is known; a request waiting in
the queue holds none of its upload's bytes, core/upload.py). Each model's bytes per window pixel
are measured (``python -m bench.memory windows``, docs/speed.md) and kept in its spec; the tile is
the largest whose window fits what is left. Only one model's windows count, one pass at a time: after each
request, and each pass but the last, the backend gives its buffers back (``Network.release_memory``). Where a worker runs several images at once
(a GPU's INFERENCE_SLOTS), each reserves what it holds beside the loaded models while it runs, and the
next starts only where its share fits beside theirs (core/admission.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from config import MEBIBYTE
from core.errors import OverDeviceMemoryBudget, OverMemoryBudget
from core.models.border import Border
from core.tiling import WINDOW_QUANTUM

# The resident size is rounded up to this, so that a few MB of difference between two workers'
# start-ups rarely gives them different tiles (and so slightly different results) for one image.
RESIDENT_QUANTUM = 32 * MEBIBYTE
# A request's own buffers per input pixel of each pass, whatever the model: the decoded input (or the previous
# pass's result) and its float copy. `python -m bench.memory request` measures the core's share (docs/speed.md).
REQUEST_BYTES_PER_INPUT_PIXEL = 24
# The result, per byte of its pixels (Header.pixel_bytes): the pixels, the encoded bytes as the encoder's
# pieces, and the pieces joined; an image that does not compress encodes to as many bytes as its pixels.
RESULT_COPIES = 3
# The upload, which the request holds from its run's start to its answer, read from the file it waited in while
# queued (Plan.upload, core/upload.py).
UPLOAD_COPIES = 1
# What a decoder copies of the upload as it opens it, beside the upload, by format: Pillow's WebP reader joins the
# upload's bytes again, and libwebp copies them. (Other formats' decoders read it in place, and are not shown the
# metadata they would keep: core/containers.py.)
DECODER_UPLOAD_COPIES = {"WEBP": 2}
# The copies decoding holds at its peak of the metadata a decoder must be shown (``Container.metadata_bytes``), by
# format: a WebP's EXIF and XMP in the image's info; a TIFF's directory values, read as the file is opened and again
# for its orientation (tracemalloc's peak, decoding a 6 MB XMP tag, is 3 times it: tests/core/test_images.py).
DECODER_METADATA_COPIES = {"WEBP": 1, "TIFF": 3}
# An ICC profile the upload stores, as decoding holds it at its peak, whatever its colour space: the bytes Pillow reads
# it from, its copy in the image's info, and the decoded image's (peak RSS 2.99 to 3.00 times the profile above the
# upload, for 15 to 30 MiB profiles in JPEG, TIFF and WebP).
DECODED_PROFILE_COPIES = 3
# What reading an upload's header (before the request's plan exists, outside every reservation) holds beside the
# upload, per byte of the ICC profile or other chunk the decoder reads as it opens the image: Pillow reads it in
# blocks and joins them (tracemalloc's peak above the upload: 2.00 times a 30 MiB profile in TIFF and WebP, 1.00
# times a 16 MiB one in JPEG, 2.00 times a PNG's 31 MiB private chunk).
HEADER_CHUNK_COPIES = 2
# A profile the result carries, as encoding holds it at its peak, by output format: the decoded image's copy, and the
# encoder's with the encoded bytes. png: the iCCP chunk (zlib cannot shrink a profile of random bytes) and the bytes
# joined; webp: libwebp's copy and its output; jpeg: Pillow's markers cut from it, their join grown a marker at a
# time, the output buffer and the bytes taken from it. Measured on a 64² image, beside the upload: png 3.03 (peak
# RSS) and 3.52 (tracemalloc) times the profile, webp 3.07 and 3.01, jpeg 6.25 and 6.02 (tests/core/test_memory.py).
ENCODED_PROFILE_COPIES = {"png": 4, "jpeg": 7, "webp": 4}
# The web page's layers carry it too: the two layers' PNG, and base64 of the three encoded images (a third larger).
LAYER_PROFILE_COPIES = 6
# A Lanczos resize to the output's size (an alpha plane, the layer strength mixes in, a resize to the size asked),
# one channel at a time, beside the levels it is made from: from a source as large as the output (a resize after
# the network), the float source, Pillow's copy of it and Pillow's result, then numpy's copy of the result.
LANCZOS_BYTES_PER_OUTPUT_PIXEL = 12
# A strength between 0 and 1 holds the Lanczos layer and the mix of the two, each the result's size.
BLEND_COPIES = 2
# The web page's layers: the Lanczos layer, the two layers' encoded bytes joined and one's pieces, and base64 of
# the three encoded images (a third larger each) in the answer.
LAYER_COPIES = 8
# A GPU window's result as the host receives it: float32 RGB (colour as 8- or 16-bit levels takes a quarter or
# half of it; ensemble and grey images take the floats).
HOST_COPY_BYTES_PER_OUTPUT_PIXEL = 12
# A grey image's window: its luma, float32, made from the RGB result before both are rounded into the output
# (core/pipeline.py). The header cannot always tell a grey result (a palette of greys), so every window counts it.
HOST_LUMA_BYTES_PER_OUTPUT_PIXEL = 4
# A GPU window's input on the host, float32 RGB: the batch the tiler stacks and the contiguous copy the runner or
# the ensemble's turning makes of it.
HOST_WINDOW_BYTES_PER_INPUT_PIXEL = 24
# The self-ensemble averages a window's 8 orientations as floats: the sum so far, the next orientation's result
# and their new sum are on the host together (core/models/ensemble.py), each a window's float32 result.
ENSEMBLE_COPIES = 3
# A GPU's results up to this size come back through pinned memory (several times faster than pageable), whose
# blocks torch keeps cached for reuse, in power-of-two sizes: about one block of each size per image in flight,
# so at most twice this per image, which the worker's room leaves aside.
PINNED_COPY_MAX_BYTES = 32 * MEBIBYTE
MIN_TILE = 16
# The windows' bytes per pixel are measured up to 384-px windows and still grow there (the backend's
# buffers do not scale evenly): a larger window would be sized by a figure nobody measured, and a worker
# serving anime at 1000² went 100 MiB past its budget with windows of the whole image.
MAX_WINDOW = 384
# The largest side of the windows a whole image's averages (Real-CUGAN's) are measured in, where the budget holds it.
STATISTICS_WINDOW = 256
# Below this the retries after a GPU's out-of-memory error stop, and no averages window is planned smaller: smaller
# tiles would spend more on their margins (up to 32 px a side) than on their centres, and smaller windows of a whole
# image's averages more on the border their runner adds (Real-CUGAN's 14 to 19 px a side).
MIN_RETRY_TILE = 64
# A 16-bit window's output, RGB at 2 bytes a channel, per output pixel: the windows of a call keep theirs on the GPU
# while those that overflowed run again in f32 (core/backends/pytorch.py).
HALF_OUTPUT_BYTES_PER_OUTPUT_PIXEL = 6


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """A process's peak resident set size (VmHWM) since it started or since ``reset_peak_rss``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel states it in kB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def reset_peak_rss() -> None:
    """Start this process's VmHWM again from its RSS now (Linux: 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def resident_estimate(rss: int) -> int:
    return -(-rss // RESIDENT_QUANTUM) * RESIDENT_QUANTUM


def pass_bytes(height: int, width: int) -> int:
    """What a pass over an input of this size holds outside the network (any channel count)."""
    return height * width * REQUEST_BYTES_PER_INPUT_PIXEL


def result_bytes(pixels: int, pixel_bytes: int, lanczos: bool, blended: bool, layers: bool) -> int:
    """What a result of ``pixels`` output pixels holds until its bytes are sent: with a Lanczos enlargement at
    its size, a strength between 0 and 1 (``blended``), and the web page's ``layers`` where they apply."""
    copies = RESULT_COPIES + BLEND_COPIES * blended + LAYER_COPIES * layers + lanczos
    return pixels * (pixel_bytes * copies + LANCZOS_BYTES_PER_OUTPUT_PIXEL * lanczos)


def sent_bytes(upload_bytes: int, stored_profile_bytes: int, carried_profile_bytes: int, output_format: str,
               layers: bool, image_format: str, metadata_bytes: int) -> int:
    """What a request holds of the bytes it was sent, beside its pixels' buffers: the upload, the copies the decoder
    of its ``image_format`` makes of it and of the ``metadata_bytes`` it is shown, and the copies of its ICC profile
    at the larger of decoding's peak (a profile of any colour space, ``stored``) and encoding's (one the result
    carries, in ``output_format`` and, with the web page's ``layers``, in theirs)."""
    carried = carried_profile_bytes * (ENCODED_PROFILE_COPIES[output_format] + LAYER_PROFILE_COPIES * layers)
    decoder = (upload_bytes * DECODER_UPLOAD_COPIES.get(image_format, 0)
               + metadata_bytes * DECODER_METADATA_COPIES.get(image_format, 0))
    return upload_bytes * UPLOAD_COPIES + decoder + max(stored_profile_bytes * DECODED_PROFILE_COPIES, carried)


def header_read_bytes(max_upload_bytes: int) -> int:
    """What reading an upload's header holds at most, outside every reservation: the upload read from its spool file
    and the copies of an ICC profile or chunk nearly as long. A worker reads one header at a time
    (``Service.read_header``), and its room sets this aside for it; a request waiting in the queue holds no bytes
    (core/upload.py)."""
    return max_upload_bytes * (UPLOAD_COPIES + HEADER_CHUNK_COPIES)


# glibc's heap thresholds, pinned (``pin_heap_thresholds``): an allocation from this size up is its own mapping, given
# back when freed, and a thread's arena keeps at most this much free at its top. Left to itself, glibc raises both
# after each large free (up to 32 MiB and 64 MiB) and keeps what a header read freed resident in the thread's arena,
# where ``malloc_trim`` does not reach: two queued 31 MiB uploads' header reads left 62 to 120 MiB there
# (tests/test_memory_budget.py), outside every reservation.
HEAP_MMAP_THRESHOLD_BYTES = MEBIBYTE
HEAP_TRIM_THRESHOLD_BYTES = MEBIBYTE
# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def pin_heap_thresholds() -> None:
    """Hold glibc's heap to fixed thresholds (``HEAP_MMAP_THRESHOLD_BYTES``) for the whole process, so that what a
    request frees leaves its RSS (under musl, which has no mallopt, nothing changes)."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
        mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)


def trim_heap() -> None:
    """Give the C heap's free pages back to the system: glibc keeps what a thread freed resident in that thread's
    arena, where another thread's allocations cannot use it (under musl, which has no malloc_trim, they stay)."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """glibc's function ``name``; None under a C library without it (musl)."""
    return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name, None)


def window_host_bytes(window_pixels: int, device: str, bytes_per_window_pixel: int, scale: int, batch: int,
                      ensemble: bool = False) -> int:
    """What a batch of windows of ``window_pixels`` each, as the network runs them (``run_pixels``), holds in the
    worker's memory: on the CPU the network's working set, on a GPU (whose working set is on the card) the inputs
    and the results copied back; with the ``ensemble``, the float sums beside the results. (The results of a
    network that crops the border it was given are counted at the padded size: a few percent over.)"""
    sums = window_pixels * ensemble_bytes_per_window_pixel(scale) * batch if ensemble else 0
    if device == "cuda":
        results = (window_pixels * scale * scale * (HOST_COPY_BYTES_PER_OUTPUT_PIXEL + HOST_LUMA_BYTES_PER_OUTPUT_PIXEL)
                   * batch)
        return window_pixels * HOST_WINDOW_BYTES_PER_INPUT_PIXEL * batch + results + sums
    return window_pixels * bytes_per_window_pixel * batch + sums


def ensemble_bytes_per_window_pixel(scale: int) -> int:
    """The ensemble's float sums beside a window's result, per window input pixel."""
    return (ENSEMBLE_COPIES - 1) * HOST_COPY_BYTES_PER_OUTPUT_PIXEL * scale * scale


def pinned_cache_bytes(device: str, slots: int) -> int:
    """The most a worker's cached pinned blocks hold: none on the CPU."""
    return 2 * slots * PINNED_COPY_MAX_BYTES if device == "cuda" else 0


def check_worker_room(budget_bytes: int, room: int, need: int, width: int, height: int, sent: int,
                      profile_bytes: int) -> None:
    """413 for an image whose buffers and windows, with the ``sent`` bytes its upload and its ICC profile of
    ``profile_bytes`` hold (``sent_bytes``), would take the worker past its budget even alone."""
    if need > room:
        profile = f" and the copies of its {profile_bytes}-byte ICC profile" if profile_bytes else ""
        raise OverMemoryBudget(f"a {width}x{height} image needs {mib_up(need)} MiB of this worker's memory "
                               f"({mib_up(sent)} MiB of it for its upload{profile}), and MEMORY_BUDGET_MB="
                               f"{budget_bytes // MEBIBYTE} leaves {max(room, 0) // MEBIBYTE} MiB beside the loaded "
                               f"models and the header being read")


def run_side(side: int, border: Border | None) -> int:
    """The side that a window side of ``side`` pixels runs at in the network: with the border its runner adds
    (Real-CUGAN's, 14 to 19 px a side), whose pixels take memory as the window's own do; a 64-px window runs at
    102 px. The per-pixel figures were measured over the window's own pixels on windows run so, so counting the
    run's pixels errs on the safe side at the sides measured (by up to 16 % at the GPU's 500² windows)."""
    return side if border is None else border.padded(side)


def run_pixels(height: int, width: int, border: Border | None) -> int:
    """The pixels a window of this shape runs at in the network (``run_side``)."""
    return run_side(height, border) * run_side(width, border)


def largest_window(available_bytes: int, bytes_per_window_pixel: int, border: Border | None = None) -> int:
    """The side of the largest square window, a multiple of the tiler's quantum, that fits as the network runs
    it (with its ``border``)."""
    if available_bytes <= 0:
        return 0
    fits = math.isqrt(available_bytes // bytes_per_window_pixel)
    side = fits // WINDOW_QUANTUM * WINDOW_QUANTUM
    while side > 0 and run_side(side, border) > fits:
        side -= WINDOW_QUANTUM
    return side


def tile_for_budget(budget_bytes: int, resident: int, request: int, bytes_per_window_pixel: int, margin: int,
                    height: int, width: int, batch: int = 1, border: Border | None = None, header_read: int = 0) -> int:
    """The tile side for this image and model within the budget, beside the loaded models (``resident``), the
    ``header_read`` bytes set aside for the header another request reads (``header_read_bytes``) and the request's
    own buffers (``request``); 413 when not even the smallest fits. An image that one window covers at the tile one
    window a call would get runs as that window: ``batch`` windows a call only share the memory where there are
    several."""
    available = budget_bytes - resident - header_read - request
    alone = _budget_tile(available, bytes_per_window_pixel, margin, border)
    tile = alone if max(height, width) <= alone else _budget_tile(available // batch, bytes_per_window_pixel,
                                                                    margin, border)
    if tile < MIN_TILE:
        raise OverMemoryBudget(
            f"a {width}x{height} image needs more memory than this worker's MEMORY_BUDGET_MB="
            f"{budget_bytes // MEBIBYTE} leaves: {resident // MEBIBYTE} MiB are the loaded models, "
            f"{mib_up(header_read)} MiB kept for reading an upload's header, "
            f"{request // MEBIBYTE} MiB this image's buffers and upload, and the smallest tile's window needs "
            f"{mib_up(smallest_window_bytes(bytes_per_window_pixel, margin, batch, border))} MiB")
    return tile


def _budget_tile(available: int, bytes_per_window_pixel: int, margin: int, border: Border | None) -> int:
    """The tile of the largest window, up to MAX_WINDOW, that ``available`` bytes hold (below MIN_TILE: none)."""
    return min(largest_window(available, bytes_per_window_pixel, border), MAX_WINDOW) - 2 * margin


def mib_up(size: int) -> int:
    """``size`` bytes in whole MiB, rounded up: what a message says is needed is never "0 MiB"."""
    return -(-size // MEBIBYTE)


def tile_window_side(tile: int, margin: int) -> int:
    """The largest side of a window of ``tile``: the tile and its margins rounded up to the tiler's quantum (the
    tiler keeps every window within it, core/tiling.py)."""
    return -(-(tile + 2 * margin) // WINDOW_QUANTUM) * WINDOW_QUANTUM


def smallest_window_bytes(bytes_per_window_pixel: int, margin: int, batch: int = 1,
                          border: Border | None = None) -> int:
    """The memory of a batch of the smallest tile's windows, as the network runs them (with its ``border``): below
    it, the budget holds no tile at all. The windows the budget sizes are multiples of the tiler's quantum
    (``largest_window``), so the smallest is MIN_TILE and its margins rounded up to one."""
    side = tile_window_side(MIN_TILE, margin)
    return run_pixels(side, side, border) * bytes_per_window_pixel * batch


def rerun_bytes(f32_copy_bytes: int, f32_bytes_per_window_pixel: int, run_pixels: int, reruns: int,
                held_bytes: int) -> int:
    """The GPU memory of a 16-bit call's f32 rerun (core/backends/pytorch.py): the f32 copy of the module's weights,
    placed for it, the ``reruns`` windows of ``run_pixels`` each that overflowed, run in f32, and the ``held_bytes``
    of the call's 16-bit outputs, kept meanwhile. The 16-bit window the tile was sized for is gone by then, its
    output apart."""
    return f32_copy_bytes + run_pixels * f32_bytes_per_window_pixel * reruns + held_bytes


def smallest_rerun_bytes(f32_copy_bytes: int, f32_bytes_per_window_pixel: int, run_pixels: int, scale: int) -> int:
    """The f32 rerun of one window of ``run_pixels`` as the network runs it, with its 16-bit output of ``scale``
    times its sides (``rerun_bytes``)."""
    held = run_pixels * scale * scale * HALF_OUTPUT_BYTES_PER_OUTPUT_PIXEL
    return rerun_bytes(f32_copy_bytes, f32_bytes_per_window_pixel, run_pixels, 1, held)


def averages_window(available_bytes: int, bytes_per_window_pixel: int, border: Border | None = None) -> int:
    """The side of the windows a whole image's averages are measured in, one at a time before the tiles: the largest
    square window that ``available`` bytes hold as the network runs it (with its ``border``), at most
    STATISTICS_WINDOW, and no less than MIN_RETRY_TILE, which the start-up check holds the budget to
    (``smallest_averages_window_bytes``)."""
    return max(MIN_RETRY_TILE, min(STATISTICS_WINDOW, largest_window(available_bytes, bytes_per_window_pixel, border)))


def averages_host_bytes(height: int, width: int, window: int, bytes_per_window_pixel: int,
                        border: Border | None = None) -> int:
    """What measuring the averages of a ``height`` x ``width`` image in windows of ``window`` holds in the worker's
    memory on the CPU: one window at a time, at most the image, as the network runs it (with its ``border``). They
    are measured before the tiles and their buffers given back first (core/models/runtime.py), so a pass holds the
    larger of this and its tiles' windows."""
    return run_pixels(min(height, window), min(width, window), border) * bytes_per_window_pixel


def check_averages_fit(budget_bytes: int, resident: int, request: int, averages_bytes: int, height: int,
                       width: int, header_read: int = 0) -> None:
    """413 for an image whose averages' window (``averages_host_bytes``) does not fit beside the loaded models
    (``resident``), the ``header_read`` bytes set aside for the header another request reads and the request's own
    buffers (``request``). On the CPU that window is STATISTICS_WINDOW whatever the budget: a smaller one would give
    other averages, and so another output, than a roomier budget does."""
    if resident + header_read + request + averages_bytes > budget_bytes:
        raise OverMemoryBudget(
            f"a {width}x{height} image needs more memory than this worker's MEMORY_BUDGET_MB="
            f"{budget_bytes // MEBIBYTE} leaves: {resident // MEBIBYTE} MiB are the loaded models, "
            f"{mib_up(header_read)} MiB kept for reading an upload's header, "
            f"{request // MEBIBYTE} MiB this image's buffers and upload, and the windows its whole-image averages "
            f"are measured in need {mib_up(averages_bytes)} MiB")


def smallest_averages_window_bytes(bytes_per_window_pixel: int, border: Border | None = None) -> int:
    """The memory of the smallest window a whole image's averages are measured in (MIN_RETRY_TILE), as the network
    runs it: below it, the budget holds no averages window at all."""
    return run_pixels(MIN_RETRY_TILE, MIN_RETRY_TILE, border) * bytes_per_window_pixel


def tile_for_device_budget(budget_bytes: int, resident: int, bytes_per_window_pixel: int, margin: int,
                           height: int, width: int, batch: int = 1, border: Border | None = None) -> int:
    """The tile side on a GPU: the whole image as one window where it fits what the budget leaves beside the
    loaded models (no margins recomputed; one window a call, whatever ``batch``), else the largest square window
    of which ``batch`` do; 413 below MIN_TILE. Windows count as the network runs them (with its ``border``).

    The request's own buffers stay on the host, so only the window counts here, with no cap: the GPU's
    figures were measured on whole 500² windows."""
    available = budget_bytes - resident
    if run_pixels(height, width, border) * bytes_per_window_pixel <= available:
        return max(height, width)
    tile = largest_window(available // batch, bytes_per_window_pixel, border) - 2 * margin
    if tile < MIN_TILE:
        raise OverDeviceMemoryBudget(
            f"a {width}x{height} image needs more GPU memory than GPU_MEMORY_BUDGET_MB={budget_bytes // MEBIBYTE} "
            f"leaves: {resident // MEBIBYTE} MiB are the loaded models, and the smallest tile's window needs "
            f"{mib_up(smallest_window_bytes(bytes_per_window_pixel, margin, batch, border))} MiB")
    return tile
