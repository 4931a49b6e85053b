"""Reading user images: EXIF orientation, colour modes, and early downscaling of huge images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Images are decoded no larger than this (longest side, pixels); the model sees far less.
DEFAULT_MAX_SIDE = 2048
# Refuse images whose header claims more pixels than this (decompression bombs).
MAX_PIXELS = 1 << 28


class ImageReadError(ValueError):
    """An image that cannot be used; the message names it."""


@dataclass
class LoadedImage:
    """An RGB image ready for the transforms.

    pixels: (H, W, 3) uint8, possibly downscaled from the original.
    width, height: the original image's size in pixels (after EXIF rotation); boxes a
        user sees are in this frame.
    """

    pixels: np.ndarray
    width: int
    height: int


def _to_rgb(image: Image.Image, file_format: str | None = None) -> Image.Image:
    """Grey, palette, RGBA (composited on white), CMYK and 16/32-bit images -> 8-bit RGB;
    ``file_format``: the format the image was read from (copies do not keep it)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        # 16-bit, however dark (Pillow before 10.3 opens 16-bit grey PNGs as "I"; PNG has no 32-bit)
        if image.mode in ("I;16", "I;16B", "I;16L") or (image.mode == "I" and file_format == "PNG"):
            scaled = values / 257.0
        elif image.mode == "I" and low >= 0 and high <= 255:
            scaled = values
        elif image.mode == "I" and low >= 0 and high <= 65535:
            scaled = values / 257.0
        else:
            scaled = (values - low) / max(high - low, 1e-12) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | Image.Image | np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> LoadedImage:
    """Load a path, PIL image or array as RGB uint8, EXIF-rotated, longest side <= max_side.

    Arrays are (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8, uint16 or float in [0, 1].
    JPEGs are decoded at reduced size directly (``draft``) so a huge photo never exists in
    memory at full size more than once.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_side)
    if isinstance(source, Image.Image):
        image, name = source, "the given image"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        if path.is_dir():
            raise ImageReadError(f"{path} is a directory, not an image")
        if path.stat().st_size == 0:
            raise ImageReadError(f"image file is empty (0 bytes): {path}")
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"image too large: {path} ({err})") from err
        except (UnidentifiedImageError, OSError) as err:
            raise ImageReadError(f"cannot read image {path}: not a supported image file ({err})") from err
    try:
        file_format = image.format
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageReadError(f"image has zero size: {name}")
        if width * height > MAX_PIXELS:
            raise ImageReadError(
                f"image too large: {name} is {width}x{height} pixels (limit {MAX_PIXELS} pixels)"
            )
        orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if image.format == "JPEG" and max(width, height) > max_side and image is not source:
            image.draft("RGB", (max_side, max_side))
        # Downscale before rotating: rotating first would copy the full-size image. The
        # caller's own PIL image is resized into a new one, never shrunk in place.
        if max(image.size) > max_side:
            if image is source:
                scale = max_side / max(image.size)
                size = tuple(max(1, round(side * scale)) for side in image.size)
                image = image.resize(size, Image.Resampling.BILINEAR)
            else:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        image = ImageOps.exif_transpose(image)
        pixels = np.asarray(_to_rgb(image, file_format))
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot decode image {name}: the file is corrupt or truncated ({err})") from err
    return LoadedImage(pixels=np.ascontiguousarray(pixels), width=width, height=height)


def _from_array(array: np.ndarray, max_side: int) -> LoadedImage:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageReadError(f"image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"image array has zero size: shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError("a float image array must hold finite values in [0, 1]; this one holds NaN or inf")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1.0 + 1e-6:
            raise ImageReadError(f"a float image array must hold values in [0, 1]; this one holds {low:g} to "
                                 f"{high:g} (pass uint8 for 0-255)")  # fmt: skip
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageReadError(f"image array dtype {array.dtype} is not supported (uint8, uint16 or float)")
    mode = "L" if array.ndim == 2 else ("RGBA" if array.shape[2] == 4 else "RGB")
    image = Image.fromarray(np.ascontiguousarray(array), mode)
    return load_image(image, max_side)
