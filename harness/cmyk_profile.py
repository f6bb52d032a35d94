"""A small but real ICC output profile for CMYK, built here: no CMYK profile ships with the packages (tests and
bench.stages use it).

Its inks are a press's (cyan prints as sRGB 0, 158, 224, not the screen's 0, 255, 255); overprints multiply
the inks' linear-light colours. The A2B0 table holds the 16 corners of CMYK in CIELAB (D50), which LittleCMS
interpolates between, so a single ink at 100 % comes out as exactly that ink.
"""
from __future__ import annotations

import itertools
import struct

import numpy as np

INKS = {"cyan": (0, 158, 224), "magenta": (226, 0, 122), "yellow": (255, 237, 0), "black": (35, 31, 32)}
D50 = (0.9642, 1.0, 0.8249)
# sRGB's linear light to XYZ, adapted to D50 (Bradford), as ICC profiles have it.
SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                            [0.2225045, 0.7168786, 0.0606169],
                            [0.0139322, 0.0971045, 0.7141733]])


def cmyk_profile() -> bytes:
    tags = [(b"desc", _description("test press CMYK")), (b"wtpt", _xyz(D50)), (b"cprt", _text("no copyright")),
            (b"A2B0", _lut16())]
    table_bytes = 4 + 12 * len(tags)
    offset = 128 + table_bytes
    table, body = [struct.pack(">I", len(tags))], b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table.append(signature + struct.pack(">II", offset + len(body), len(data)))
        body += padded
    size = 128 + table_bytes + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"Lab "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + b"".join(_s15(value) for value in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + b"".join(table) + body


def ink_srgb(inks: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """The sRGB colour of a CMYK corner (each ink 0 or 1): the inks' linear light multiplied."""
    light = np.ones(3)
    for amount, colour in zip(inks, INKS.values()):
        if amount:
            light *= _linear(np.array(colour) / 255)
    return tuple(int(round(value)) for value in _encoded(light) * 255)


def _lut16() -> bytes:
    identity = b"".join(_s15(1.0 if row == column else 0.0) for row in range(3) for column in range(3))
    ramp = struct.pack(">2H", 0, 65535)
    grid = b"".join(_lab16(_lab(ink_srgb(corner))) for corner in itertools.product((0, 1), repeat=4))
    return (b"mft2" + b"\0" * 4 + bytes([4, 3, 2, 0]) + identity + struct.pack(">2H", 2, 2)
            + ramp * 4 + grid + ramp * 3)


def _lab(srgb: tuple[int, int, int]) -> tuple[float, float, float]:
    x, y, z = SRGB_TO_XYZ_D50 @ _linear(np.array(srgb) / 255) / np.array(D50)
    f = [value ** (1 / 3) if value > 216 / 24389 else (24389 / 27 * value + 16) / 116 for value in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def _lab16(lab: tuple[float, float, float]) -> bytes:
    """CIELAB in a version 2 lut16's encoding: L 0-100 as 0-0xFF00, a and b -128-127.996 as 0-0xFFFF."""
    lightness, a, b = lab
    return struct.pack(">3H", round(lightness * 652.8), round((a + 128) * 256), round((b + 128) * 256))


def _linear(encoded: np.ndarray) -> np.ndarray:
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


def _encoded(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(value) for value in xyz)


def _text(text: str) -> bytes:
    return b"text" + b"\0" * 4 + text.encode() + b"\0"


def _description(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return (b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)
