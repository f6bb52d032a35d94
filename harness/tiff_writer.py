"""TIFFs written sample by sample, as Pillow cannot write them: 16-bit colour, extra samples, the horizontal
predictor, tiles, BigTIFF, either byte order. The tests of core/tiff16.py and the memory probes read them."""
from __future__ import annotations

import struct
import zlib

import numpy as np

NONE, LZW, DEFLATE, PACKBITS = 1, 5, 8, 32773


def lzw(data: bytes) -> bytes:
    """TIFF LZW of ``data`` as literal 9-bit codes, a Clear code before the table would widen them."""
    codes = []
    for start in range(0, len(data), 250):
        codes += [256, *data[start:start + 250]]
    codes.append(257)
    bits = "".join(f"{code:09b}" for code in codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def packbits(data: bytes) -> bytes:
    """PackBits of ``data`` as literal runs of up to 128 bytes, each after its length less one."""
    return b"".join(bytes([len(data[start:start + 128]) - 1]) + data[start:start + 128]
                    for start in range(0, len(data), 128))


def compress(data: bytes, compression: int) -> bytes:
    return {NONE: lambda raw: raw, LZW: lzw, DEFLATE: zlib.compress, PACKBITS: packbits}[compression](data)


def differenced(pixels: np.ndarray) -> np.ndarray:
    """The horizontal predictor: each sample less the same channel of the pixel to its left, modulo 2**16."""
    out = pixels.copy()
    out[:, 1:] = pixels[:, 1:] - pixels[:, :-1]
    return out


def tiff(pixels: np.ndarray, photometric: int, extra: tuple[int, ...] = (), compression: int = NONE,
         predictor: bool = False, tile: int | None = None, orientation: int | None = None, order: str = "<",
         sample_format: int = 1, big: bool = False) -> bytes:
    """A TIFF (a BigTIFF where ``big``) of (H, W, C) ``pixels`` (their dtype gives the bits), in one strip or in
    ``tile`` x ``tile`` tiles."""
    height, width, samples = pixels.shape
    pieces = []
    for top, left, rows, columns in _pieces(height, width, tile):
        piece = np.zeros((rows, columns, samples), pixels.dtype)
        part = pixels[top:top + rows, left:left + columns]
        piece[:part.shape[0], :part.shape[1]] = part
        if predictor:
            piece = differenced(piece)
        pieces.append(compress(piece.astype(piece.dtype.newbyteorder(order)).tobytes(), compression))
    entries = {256: (4, [width]), 257: (4, [height]), 258: (3, [pixels.dtype.itemsize * 8] * samples),
               259: (3, [compression]), 262: (3, [photometric]), 277: (3, [samples]), 284: (3, [1]),
               339: (3, [sample_format] * samples), 317: (3, [2 if predictor else 1])}
    offsets, counts = (324, 325) if tile else (273, 279)
    entries |= {offsets: (4, [0] * len(pieces)), counts: (4, [len(piece) for piece in pieces])}
    entries |= {322: (3, [tile]), 323: (3, [tile])} if tile else {278: (4, [height])}
    if extra:
        entries[338] = (3, list(extra))
    if orientation:
        entries[274] = (3, [orientation])
    return _write(entries, pieces, order, big)


def _pieces(height: int, width: int, tile: int | None) -> list[tuple[int, int, int, int]]:
    if not tile:
        return [(0, 0, height, width)]
    return [(top, left, tile, tile) for top in range(0, height, tile) for left in range(0, width, tile)]


def _write(entries: dict[int, tuple[int, list[int]]], pieces: list[bytes], order: str, big: bool) -> bytes:
    """The file: header, the one directory, the values that do not fit their entries, then the pieces."""
    tags = sorted(entries)
    count, field, entry_bytes = ("Q", 8, 20) if big else ("I", 4, 12)
    header_bytes = 16 if big else 8
    values_at = header_bytes + struct.calcsize(order + ("Q" if big else "H")) + entry_bytes * len(tags) + field
    values, fields = b"", []
    sizes = [len(entries[tag][1]) * (2 if entries[tag][0] == 3 else 4) for tag in tags]
    pixels_at = values_at + sum(size for size in sizes if size > field)
    piece_offsets = np.cumsum([pixels_at, *(len(piece) for piece in pieces)])[:-1].tolist()
    offsets_tag = 324 if 324 in entries else 273
    entries[offsets_tag] = (4, piece_offsets)
    for tag in tags:
        kind, numbers = entries[tag]
        packed = struct.pack(f"{order}{len(numbers)}{'H' if kind == 3 else 'I'}", *numbers)
        if len(packed) <= field:
            fields.append(struct.pack(f"{order}HH{count}", tag, kind, len(numbers)) + packed.ljust(field, b"\x00"))
        else:
            fields.append(struct.pack(f"{order}HH{count}{count}", tag, kind, len(numbers), values_at + len(values)))
            values += packed
    magic = (b"II" if order == "<" else b"MM") + struct.pack(f"{order}H", 43 if big else 42)
    head = magic + (struct.pack(f"{order}HHQQ", 8, 0, 16, len(tags)) if big else struct.pack(f"{order}IH", 8, len(tags)))
    return head + b"".join(fields) + bytes(field) + values + b"".join(pieces)
