"""PNG writing for results: 8- or 16-bit grey, grey+alpha, RGB and RGBA, compressed on several cores at once.

Pillow's encoder tries every PNG filter on every row and runs zlib on one core, which made it most of a
large request's time outside the network (docs/speed.md has the measurements). Here every row gets the
Average filter (computed with numpy; on upscaled photos it compresses as well as Pillow's adaptive choice)
and the rows are cut into ``parts`` runs, each deflated by its own thread; the runs end on a byte boundary
(a full flush), so their concatenation is one valid zlib stream, as pigz writes them. Levels 1 to 3 deflate
with ISA-L (the isal package): four times less CPU than zlib's level 1 on an upscaled photo, and smaller
files (docs/speed.md); 0 and 4 to 9 with zlib. Both give the GIL up while they work.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
AVERAGE_FILTER = 3
BLOCK_BYTES = 1 << 20  # filtered rows deflated at a time: bounds the encoder's own buffers per thread
ADLER_BASE = 65521
ZLIB_HEADER = b"\x78\x01"  # deflate with a 32 KiB window; the level hint is informative only
ISAL_LEVELS = range(1, 4)  # ISA-L's levels; zlib's 0 stores, and 4 to 9 compress harder than ISA-L's 3


@dataclass(frozen=True)
class Planes:
    """The pixels to write: colour, and alpha where there is one, as one image of colour + 1 channels."""

    colour: np.ndarray
    alpha: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int, int]:
        height, width, channels = self.colour.shape
        return height, width, channels + (self.alpha is not None)

    def row_bytes(self, start: int, stop: int) -> np.ndarray:
        """Rows as PNG stores them: (rows, bytes per row), channels interleaved, 16-bit samples big-endian."""
        rows = self.colour[start:stop]
        if self.alpha is not None:
            rows = np.concatenate([rows, self.alpha[start:stop, :, None]], axis=-1)
        if rows.dtype == np.uint16:
            rows = rows.astype(">u2")
        return np.ascontiguousarray(rows).view(np.uint8).reshape(stop - start, -1)


def encode_png(pixels: np.ndarray, icc_profile: bytes | None, level: int, parts: int,
               alpha: np.ndarray | None = None, chunks: tuple[bytes, ...] = ()) -> bytes:
    """``pixels`` (H, W, C) uint8 or uint16 with C in 1..4, as a PNG at zlib ``level`` on ``parts`` threads.

    ``alpha`` (H, W), of the pixels' dtype, is written as one more channel, joined a block of rows at a time:
    a joined copy of the whole image would cost as much memory as the image. ``chunks`` are whole chunks
    (gAMA, cHRM, sRGB, pHYs, ...) written as they are, before the pixel data as PNG requires."""
    planes = Planes(pixels, alpha)
    height, width, channels = planes.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    header = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPES[channels], 0, 0, 0)
    pieces = [SIGNATURE, *chunk(b"IHDR", [header]), *chunks]
    if icc_profile:
        pieces += chunk(b"iCCP", [b"ICC Profile\x00\x00" + zlib.compress(icc_profile)])
    pieces += [*chunk(b"IDAT", _zlib_stream(planes, level, parts)), *chunk(b"IEND", [])]
    # One join: a large result's compressed bytes are copied once, as Pillow's BytesIO copies them.
    return b"".join(pieces)


def chunk(kind: bytes, body: list[bytes]) -> list[bytes]:
    """A chunk as pieces, its body left in the pieces it came in."""
    crc = zlib.crc32(kind)
    for piece in body:
        crc = zlib.crc32(piece, crc)
    return [struct.pack(">I", sum(len(piece) for piece in body)) + kind, *body, struct.pack(">I", crc)]


def _zlib_stream(pixels: Planes, level: int, parts: int) -> list[bytes]:
    height = pixels.shape[0]
    bounds = [height * part // parts for part in range(parts + 1)]
    runs = [(start, stop) for start, stop in zip(bounds, bounds[1:]) if stop > start]
    last = len(runs) - 1
    # Futures, not bare threads: a run that fails (MemoryError) raises here rather than leaving a hole in the stream.
    with ThreadPoolExecutor(max(last, 1), thread_name_prefix="png-deflate") as pool:
        later = [pool.submit(_deflate_rows, pixels, *runs[index], level, index == last) for index in range(1, last + 1)]
        results = [_deflate_rows(pixels, *runs[0], level, last == 0), *(future.result() for future in later)]
    checksum = 1
    for _, adler, length in results:
        checksum = _adler32_combine(checksum, adler, length)
    return [ZLIB_HEADER, *(piece for pieces, _, _ in results for piece in pieces), struct.pack(">I", checksum)]


def _deflate_rows(pixels: Planes, start: int, stop: int, level: int, last: bool) -> tuple[list[bytes], int, int]:
    """Rows ``start:stop`` filtered and raw-deflated; with their Adler-32 and length for the stream's checksum."""
    deflate = isal_zlib if level in ISAL_LEVELS else zlib
    compressor = deflate.compressobj(level, deflate.DEFLATED, -zlib.MAX_WBITS)
    pixel_bytes = pixels.shape[2] * pixels.colour.itemsize
    row_bytes = pixels.shape[1] * pixel_bytes
    block = max(1, BLOCK_BYTES // row_bytes)
    pieces, adler, length = [], 1, 0
    for top in range(start, stop, block):
        filtered = _average_filtered(pixels.row_bytes(max(top - 1, 0), min(top + block, stop)), pixel_bytes,
                                     first=top == 0)
        pieces.append(compressor.compress(filtered))
        adler = zlib.adler32(filtered, adler)
        length += filtered.nbytes
    pieces.append(compressor.flush(deflate.Z_FINISH if last else deflate.Z_FULL_FLUSH))
    return pieces, adler, length


def _average_filtered(rows: np.ndarray, pixel_bytes: int, first: bool) -> np.ndarray:
    """PNG's Average filter of ``rows``, each byte less the floor of the mean of the bytes left of it and above it.

    ``rows`` begins with the row above the first one to filter, unless ``first`` (the image's top row, whose
    row above counts as zeros). The mean is taken as (a >> 1) + (b >> 1) + (a & b & 1) to stay in uint8. The
    prediction is built in the result's own rows, with two temporaries of the block's size: every encoding
    thread holds them at once.
    """
    current = rows if first else rows[1:]
    filtered = np.empty((len(current), current.shape[1] + 1), np.uint8)
    filtered[:, 0] = AVERAGE_FILTER
    prediction = filtered[:, 1:]
    if first:
        prediction[0] = 0
        np.right_shift(current[:-1], 1, out=prediction[1:])
        up = np.concatenate([prediction[:1], current[:-1]])[:, pixel_bytes:]
    else:
        np.right_shift(rows[:-1], 1, out=prediction)
        up = rows[:-1, pixel_bytes:]
    left = current[:, :-pixel_bytes]
    half_left = np.right_shift(left, 1)
    both_odd = np.bitwise_and(left, up)
    both_odd &= 1
    half_left += both_odd
    prediction[:, pixel_bytes:] += half_left
    np.subtract(current, prediction, out=prediction)
    return filtered


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte runs end to end, from theirs (zlib's adler32_combine, which Python lacks)."""
    sum_a = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % ADLER_BASE
    sum_b = ((first >> 16) + (second >> 16) + second_length * ((first & 0xFFFF) - 1)) % ADLER_BASE
    return sum_b << 16 | sum_a
