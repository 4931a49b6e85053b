"""Drawing grounded boxes on images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]  # fmt: skip


def box_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_boxes(pixels: np.ndarray, results: Sequence, scale: float = 1.0, labels: Sequence[str] | None = None) -> Image.Image:
    """Draw each result's box (xyxy original pixels, times ``scale`` to reach ``pixels``) with
    its own colour and a label "<text> <score>"; returns a new RGB PIL image."""
    image = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 250))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    for i, result in enumerate(results):
        color = box_color(i)
        x0, y0, x1, y1 = (v * scale for v in result.box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        label = labels[i] if labels is not None else f"{result.text} {result.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_y = y0 - (bottom - top) - 4 if y0 - (bottom - top) - 4 >= 0 else y0 + width
        draw.rectangle([x0, text_y, x0 + right - left + 6, text_y + bottom - top + 4], fill=color)
        draw.text((x0 + 3, text_y + 2 - top), label, fill=(255, 255, 255), font=font)
    return image
