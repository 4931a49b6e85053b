"""Image/box/phrase transforms: letterbox or stretch resize, training augmentation (random
zoom, or SimVG's large-scale jitter), flip with word swap.

Coordinates: the *letterbox frame* is the model input (S x S pixels) in which the resized
image sits at the top-left: with ``model.resize: letterbox`` resized to fit with its aspect
ratio kept, the rest padding; with ``stretch`` scaled to fill all S x S (width and height by
different factors). Either way the image is the original scaled by (scale_x, scale_y) from the
top-left corner (:class:`Letterbox`). The model predicts normalised (cx, cy, w, h) in that
frame; :func:`letterbox_to_original` maps them back to (x0, y0, x1, y1) pixels of the
original image.
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

    scale_x, scale_y: model-input pixels per original pixel (letterbox: nearly equal, kept
        apart so the mapping back is the exact inverse of the resize; stretch: S / width and
        S / height).
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


def stretch_resize(pixels: np.ndarray, width: int, height: int, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize an image (possibly pre-downscaled from ``width`` x ``height``) to exactly
    size x size, width and height scaled separately (SimVG's ``keep_ratio=False``).

    Returns the (size, size, 3) image and its :class:`Letterbox` (scale_x = size / width,
    scale_y = size / height)."""
    shrinking = size < pixels.shape[1] and size < pixels.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (size, size), interpolation=interpolation)
    return resized, Letterbox(size / width, size / height, width, height)


def resize_for_model(
    pixels: np.ndarray, width: int, height: int, size: int, mode: str
) -> tuple[np.ndarray, Letterbox]:
    """:func:`letterbox_resize` (``mode`` "letterbox": not yet padded) or
    :func:`stretch_resize` (``mode`` "stretch"), as ``model.resize`` says."""
    if mode == "letterbox":
        return letterbox_resize(pixels, width, height, size)
    if mode == "stretch":
        return stretch_resize(pixels, width, height, size)
    raise ValueError(f"unknown resize mode '{mode}'; choose letterbox or stretch")


# SimVG's LargeScaleJitter: crops are drawn until one keeps at least this share of the target
# box (the highest threshold first, 100 tries each); failing all, the best crop if it keeps
# at least LSJ_MIN_KEPT, else no crop.
LSJ_KEPT_THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5)
LSJ_TRIES = 100
LSJ_MIN_KEPT = 0.3


@dataclass
class Jitter:
    """The axis-aligned map a :func:`large_scale_jitter` applied: a point (x, y) of the
    original image lands at (x * scale_x - left, y * scale_y - top) of the jittered image,
    which is ``width`` x ``height`` pixels."""

    scale_x: float
    scale_y: float
    left: int
    top: int
    width: int
    height: int

    def box(self, box_xyxy: tuple[float, ...] | list[float]) -> list[float] | None:
        """``box_xyxy`` (original pixels) in the jittered image, clipped to it; None when no
        part of it is left."""
        x0, y0, x1, y1 = box_xyxy
        x0, x1 = x0 * self.scale_x - self.left, x1 * self.scale_x - self.left
        y0, y1 = y0 * self.scale_y - self.top, y1 * self.scale_y - self.top
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(self.width), x1), min(float(self.height), y1)
        return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None

    def holds_centre(self, box_xyxy: tuple[float, ...] | list[float]) -> bool:
        """Whether the centre of ``box_xyxy`` (original pixels) is inside the jittered image."""
        cx = (box_xyxy[0] + box_xyxy[2]) / 2 * self.scale_x - self.left
        cy = (box_xyxy[1] + box_xyxy[3]) / 2 * self.scale_y - self.top
        return 0 <= cx < self.width and 0 <= cy < self.height


def kept_share(crop_xyxy: np.ndarray, box_xyxy: np.ndarray) -> np.ndarray:
    """Share of ``box_xyxy``'s area inside each crop: crop_xyxy (N, 4), box_xyxy (4,) -> (N,)."""
    wh = np.minimum(crop_xyxy[:, 2:], box_xyxy[2:]) - np.maximum(crop_xyxy[:, :2], box_xyxy[:2])
    area = max((box_xyxy[2] - box_xyxy[0]) * (box_xyxy[3] - box_xyxy[1]), 1e-9)
    return np.clip(wh, 0, None).prod(axis=1) / area


def large_scale_jitter(
    pixels: np.ndarray,
    width: int,
    height: int,
    size: int,
    box_xyxy: tuple[float, ...] | list[float],
    scale_range: tuple[float, float] | list[float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, Jitter]:
    """SimVG's LargeScaleJitter (its ``LargeScaleJitter`` pipeline step, before the resize).

    The image (``pixels``, possibly pre-downscaled from ``width`` x ``height``) is rescaled
    so its longer side is ``r * size``, r drawn uniformly from ``scale_range`` (SimVG: 0.3 to
    1.4). For r > 1 a crop of the unjittered size (longer side ``size``) is taken at a random
    place that keeps a share of the box ``box_xyxy`` (original pixels: the target, or the box
    around several targets) of at least 0.9
    if one is found in 100 draws, else 0.8, ... 0.5 (:data:`LSJ_KEPT_THRESHOLDS`); failing
    those, the best draw if it keeps at least 0.3, else the whole rescaled image. For r <= 1
    the image is only rescaled (the model's resize then brings it back to ``size``: a loss of
    detail, as in SimVG, whose resize stretches it back).

    Returns the jittered (h, w, 3) image and its :class:`Jitter` from original pixels.
    """
    low, high = scale_range
    ratio = low + rng.random() * (high - low)
    fit = size / max(width, height)
    new_w, new_h = max(1, round(width * fit * ratio)), max(1, round(height * fit * ratio))
    image = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    jitter = Jitter(new_w / width, new_h / height, 0, 0, new_w, new_h)
    if ratio <= 1.0:
        return image, jitter
    crop_w, crop_h = min(new_w, max(1, round(width * fit))), min(new_h, max(1, round(height * fit)))
    box = np.array(box_xyxy, dtype=np.float64) * [jitter.scale_x, jitter.scale_y, jitter.scale_x, jitter.scale_y]
    best, best_kept = None, -1.0
    for threshold in LSJ_KEPT_THRESHOLDS:
        origins = rng.random((LSJ_TRIES, 2)) * [new_w - crop_w, new_h - crop_h]
        crops = np.concatenate([origins, origins + [crop_w, crop_h]], axis=1)
        kept = kept_share(crops, box)
        passing = np.nonzero(kept >= threshold)[0]
        if len(passing):
            best, best_kept = origins[passing[0]], kept[passing[0]]
            break
        if kept.max() > best_kept:
            best, best_kept = origins[kept.argmax()], float(kept.max())
    if best_kept < LSJ_MIN_KEPT:
        return image, jitter
    left, top = int(best[0]), int(best[1])  # SimVG truncates the crop's origin to whole pixels
    jitter = Jitter(jitter.scale_x, jitter.scale_y, left, top, crop_w, crop_h)
    return image[top : top + crop_h, left : left + crop_w], jitter


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
    """Colour jitter, flip, and (``mode`` "zoom") random zoom and placement inside the S x S
    input with an optional box-safe crop; (``mode`` "lsj") padding to S x S only, the
    jitter having been applied before (:func:`large_scale_jitter`).

    With ``crop`` False the whole image stays visible (zoom <= 1 and random placement), so
    phrases about absolute positions stay true; with ``crop`` True zooms above 1 crop around
    the target box.
    """
    # Hue stays fixed: colour words ("the red one") must stay true.
    steps: list[A.BasicTransform] = [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.0, p=config.color),
        A.HorizontalFlip(p=config.flip),
    ]
    if config.mode == "lsj":  # the geometry was done before (large_scale_jitter); only pad
        steps.append(A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                                   fill_mask=0))  # fmt: skip
        return A.Compose(
            steps,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
            save_applied_params=True,
        )
    low, high = config.scale
    if not config.crop:
        high = min(high, 1.0)
    sizes = sorted({max(8, round(size * s)) for s in np.linspace(low, high, 16)})
    steps.append(A.LongestMaxSize(max_size=sizes, p=1.0))
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
