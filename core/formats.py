"""The output formats a request may ask for: what the request schema offers and the encoder writes.

Kept apart from the image codec (core/images.py), so that the options and the command line read them
without importing numpy and Pillow.
"""
from __future__ import annotations

# format option -> (Pillow's format name, the answer's content type)
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
# Widest or tallest image each output format can hold.
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}
# From this quality on, jpeg keeps colour at the full resolution (4:4:4, as Photoshop and GIMP do at high
# quality): below it, Pillow halves colour each way (4:2:0), throwing away half the colour detail the model made.
JPEG_FULL_COLOUR_QUALITY = 90
# The longest ICC profile a JPEG holds: 255 APP2 markers (their count is one byte) of 65519 bytes each. Pillow
# writes a longer one all the same, its markers' count wrapped around, and viewers cannot read it back.
MAX_JPEG_ICC_PROFILE_BYTES = 255 * 65519
