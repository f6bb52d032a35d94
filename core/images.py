"""Decoding uploads into arrays and encoding results, with Pillow.

A decoded image is split into colour (grey or RGB, 8 or 16 bits) and an
optional alpha channel, so that the network sees colour only and the alpha
channel can be upscaled on its own and put back.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidImage, TooLarge

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


@dataclass(frozen=True)
class DecodedImage:
    colour: np.ndarray            # (H, W, 1) grey or (H, W, 3) RGB; uint8 or uint16
    alpha: np.ndarray | None      # (H, W), same dtype as colour
    icc_profile: bytes | None

    @property
    def height(self) -> int:
        return self.colour.shape[0]

    @property
    def width(self) -> int:
        return self.colour.shape[1]

    @property
    def max_value(self) -> int:
        return int(np.iinfo(self.colour.dtype).max)


def describe_accepted() -> str:
    return ", ".join(ACCEPTED_FORMATS)


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode ``data``; 400 when it is not an accepted image, 413 when it has too many pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            _check_pixels(image.size, max_pixels)
            image.load()
            image = ImageOps.exif_transpose(image)
    except (TooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise TooLarge(f"image rejected by the decompression-bomb guard: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImage(f"the upload is not a readable image ({error}); accepted formats: {describe_accepted()}") from error
    return _split_channels(image)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} input pixels")


def _split_channels(image: Image.Image) -> DecodedImage:
    icc = image.info.get("icc_profile")
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        grey = np.asarray(image, dtype=np.uint32).clip(0, 65535).astype(np.uint16)
        return DecodedImage(grey[..., None], None, icc)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    grey = image.mode in ("L", "LA", "1") or (image.mode == "P" and _palette_is_grey(image))
    if image.mode == "CMYK":
        icc = None  # a CMYK profile does not describe the RGB output
    target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(image.convert(target))
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if has_alpha:
        return DecodedImage(np.ascontiguousarray(pixels[..., :-1]), np.ascontiguousarray(pixels[..., -1]), icc)
    return DecodedImage(pixels, None, icc)


def _palette_is_grey(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Upscale an alpha channel to ``size`` (width, height) with Lanczos, keeping its dtype."""
    resized = Image.fromarray(alpha.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.rint(np.asarray(resized)), 0, np.iinfo(alpha.dtype).max).astype(alpha.dtype)


def downscale(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) pixels of any channel count and dtype to ``size`` with Lanczos."""
    channels = [resize_alpha(pixels[..., c], size) for c in range(pixels.shape[-1])]
    return np.stack(channels, axis=-1)


def encode(colour: np.ndarray, alpha: np.ndarray | None, icc_profile: bytes | None,
           output_format: str, quality: int) -> bytes:
    """Encode pixels as png, jpeg or webp; 16-bit grey stays 16-bit in PNG."""
    pil_format, _ = OUTPUT_FORMATS[output_format]
    image = _to_pillow(colour, alpha)
    if pil_format == "JPEG" and image.mode in ("RGBA", "LA"):
        raise InvalidImage("jpeg cannot hold the image's alpha channel; ask for format png or webp")
    if pil_format != "PNG" and colour.dtype == np.uint16:
        image = Image.fromarray((colour[..., 0] >> 8).astype(np.uint8)) if colour.shape[-1] == 1 else image
    options: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}
    if pil_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def _to_pillow(colour: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if colour.shape[-1] == 1 and colour.dtype == np.uint16:
        return Image.fromarray(colour[..., 0])
    if alpha is None:
        return Image.fromarray(colour[..., 0] if colour.shape[-1] == 1 else colour)
    return Image.fromarray(np.concatenate([colour, alpha[..., None]], axis=-1))
