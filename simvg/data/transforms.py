"""Image/box/phrase transforms: letterbox, training augmentation, flip with word swap.

Coordinates: the *letterbox frame* is the model input (S x S pixels) in which the image,
resized to fit with its aspect ratio kept, sits at the top-left and the rest is padding.
The model predicts normalised (cx, cy, w, h) in that frame; :func:`letterbox_to_original`
maps them back to (x0, y0, x1, y1) pixels of the original image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from torchvision.ops import box_convert

from simvg.config import AugmentConfig

_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SWAP_PATTERN = re.compile(r"\b(" + "|".join(_SWAP) + r")\b", re.IGNORECASE)


def swap_left_right(phrase: str) -> str:
    """Swap the words left/right (and leftmost/rightmost) on word boundaries, keeping case.

    "the bright cup on the left" -> "the bright cup on the right"; "bright" is untouched.
    """

    def replace(match: re.Match[str]) -> str:
        word = match.group(0)
        swapped = _SWAP[word.lower()]
        if word.isupper():
            return swapped.upper()
        if word[0].isupper():
            return swapped.capitalize()
        return swapped

    return _SWAP_PATTERN.sub(replace, phrase)


@dataclass
class Letterbox:
    """Where the original image sits in the S x S model input.

    scale_x, scale_y: letterbox pixels per original pixel (nearly equal; kept apart so the
        mapping back is the exact inverse of the resize).
    width, height: the original image size in pixels.
    """

    scale_x: float
    scale_y: float
    width: int
    height: int


def letterbox_resize(pixels: np.ndarray, width: int, height: int, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize an image (possibly pre-downscaled from ``width`` x ``height``) to fit in size x size.

    Returns the resized (h', w', 3) image (not yet padded) and its :class:`Letterbox`.
    """
    scale = size / max(width, height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    shrinking = new_w < pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    return resized, Letterbox(new_w / width, new_h / height, width, height)


def letterbox_to_original(boxes_cxcywh: torch.Tensor, size: int, letterboxes: list[Letterbox]) -> torch.Tensor:
    """Map model boxes back to the original images.

    boxes_cxcywh: (B, 4) normalised cx, cy, w, h in the letterbox frame.
    Returns (B, 4) x0, y0, x1, y1 float pixels of each original image, clipped to it.
    """
    boxes = box_convert(boxes_cxcywh.float() * size, "cxcywh", "xyxy")
    scale = torch.tensor([[lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y] for lb in letterboxes], dtype=boxes.dtype)
    limits = torch.tensor([[lb.width, lb.height, lb.width, lb.height] for lb in letterboxes], dtype=boxes.dtype)
    boxes = boxes / scale.to(boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits.to(boxes.device))


def original_to_letterbox(box_xyxy: tuple[float, ...], letterbox: Letterbox) -> list[float]:
    x0, y0, x1, y1 = box_xyxy
    sx, sy = letterbox.scale_x, letterbox.scale_y
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def build_train_augmentation(size: int, config: AugmentConfig) -> A.Compose:
    """Random zoom and placement inside the S x S input, optional box-safe crop, flip, colour.

    With ``crop`` False the whole image stays visible (zoom <= 1 and random placement), so
    phrases about absolute positions stay true; with ``crop`` True (large-scale jitter)
    zooms above 1 crop around the target box.
    """
    low, high = config.scale
    if not config.crop:
        high = min(high, 1.0)
    sizes = sorted({max(8, round(size * s)) for s in np.linspace(low, high, 16)})
    # Hue stays fixed: colour words ("the red one") must stay true.
    steps: list[A.BasicTransform] = [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.0, p=config.color),
        A.HorizontalFlip(p=config.flip),
        A.LongestMaxSize(max_size=sizes, p=1.0),
    ]
    if config.crop:
        steps += [A.BBoxSafeRandomCrop(erosion_rate=0.0, p=1.0), A.LongestMaxSize(max_size=size, p=1.0)]
    steps.append(A.PadIfNeeded(size, size, position="random", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0))
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
        save_applied_params=True,
    )


def pad_to_square(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad an (h, w, 3) image at the bottom/right to (size, size, 3); returns it and its pixel mask."""
    h, w = image.shape[:2]
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    padded[:h, :w] = image
    mask = np.zeros((size, size), dtype=bool)
    mask[:h, :w] = True
    return padded, mask
