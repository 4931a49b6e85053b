"""Drawing grounded boxes on images, each phrase in its own colour, with labels that never
cover each other or leave the image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]  # fmt: skip
LABEL_PADDING = 3  # pixels of the label's background around its text

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 pixels, half-open: [x0, x1) x [y0, y1)


def box_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


@dataclass
class PhraseBoxes:
    """One phrase's answer to draw: ``boxes`` (xyxy, original-image pixels) with their scores;
    none (no match), one, or several. ``label`` names the phrase on the image; ``short`` is
    used where the whole label finds no room (e.g. its number)."""

    label: str
    boxes: list[tuple[tuple[float, float, float, float], float]]
    color: tuple[int, int, int]
    short: str | None = None


def disjoint(a: Rect, b: Rect) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def place_labels(anchors: Sequence[Rect], sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 taken: Sequence[Rect] = (), avoid: Sequence[Rect] = ()) -> list[Rect | None]:  # fmt: skip
    """Where each label goes: label i, ``sizes[i]`` (w, h) pixels, belongs to the box
    ``anchors[i]`` (pixels of the drawn image). Each label lies inside the ``image_size``
    (w, h) image and overlaps no other label, nor the rectangles in ``taken`` and ``avoid``
    (other boxes; its own box may be covered); in order of preference just above the box's
    left corner, below it, inside its top, then the free spot nearest to it. None where a
    label is larger than the image or no spot is free."""
    width, height = image_size
    placed: list[Rect] = list(taken)
    found: list[Rect | None] = []
    for (x0, y0, x1, y1), (w, h) in zip(anchors, sizes):
        if w > width or h > height or w <= 0 or h <= 0:
            found.append(None)
            continue

        def clamp(x: float, y: float, w: int = w, h: int = h) -> Rect:
            x, y = int(min(max(round(x), 0), width - w)), int(min(max(round(y), 0), height - h))
            return (x, y, x + w, y + h)

        preferred = [clamp(x0, y0 - h), clamp(x0, y1), clamp(x0, y0), clamp(x1 - w, y0 - h), clamp(x1 - w, y1),
                     clamp(x0, y1 - h)]  # fmt: skip
        want_x, want_y = preferred[0][:2]
        blocked = placed + [r for r in avoid if r != (x0, y0, x1, y1)]
        # A free spot, slid left then up until it touches a border or a blocked rectangle, stays
        # free: these corners are every place worth trying.
        xs = {0, width - w, want_x} | {r[2] for r in blocked} | {r[0] - w for r in blocked}
        ys = {0, height - h, want_y} | {r[3] for r in blocked} | {r[1] - h for r in blocked}
        corners = sorted(((x, y, x + w, y + h) for x in xs for y in ys if 0 <= x <= width - w and 0 <= y <= height - h),
                         key=lambda r: ((r[0] - want_x) ** 2 + (r[1] - want_y) ** 2, r))  # fmt: skip
        spot = next((r for r in [*preferred, *corners] if all(disjoint(r, b) for b in blocked)), None)
        if spot is not None:
            placed.append(spot)
        found.append(spot)
    return found


def _fit(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> tuple[str, int, int, int]:
    """``text`` (shortened with an ellipsis if needed) whose label fits ``max_width`` pixels;
    returns (text, label width, label height, the text's top offset)."""
    while True:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * LABEL_PADDING, bottom - top + 2 * LABEL_PADDING
        if w <= max_width or len(text) <= 1:
            return text, w, h, top
        text = text[:-2].rstrip() + "…" if len(text) > 2 else text[:1]


def label_font(image_size: tuple[int, int]):
    """The labels' font for an image of ``image_size`` (w, h) pixels."""
    return ImageFont.load_default(size=max(12, round(max(image_size) / 40)))


def layout_labels(image_size: tuple[int, int], groundings: Sequence[PhraseBoxes],
                  scale: float = 1.0) -> list[tuple[PhraseBoxes, tuple[float, float, float, float], str | None, Rect | None]]:  # fmt: skip
    """Every box to draw (``scale`` times its original-pixel coordinates) with its label's
    text and place on an ``image_size`` (w, h) image: (phrase, box, text, rect). Labels never
    overlap or leave the image: a label with no room is shortened to its ``short`` form, and
    left out (text and rect None) if even that finds none."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = label_font(image_size)
    drawn = [(g, tuple(v * scale for v in box)) for g in groundings for box, _ in g.boxes]
    anchors = [tuple(int(round(v)) for v in box) for _, box in drawn]
    placed: list[Rect] = []
    layout = []
    for (g, box), anchor in zip(drawn, anchors):
        texts = [_fit(measure, t, font, image_size[0]) for t in dict.fromkeys(t for t in (g.label, g.short) if t)]
        chosen: tuple[str | None, Rect | None] = (None, None)
        # The whole label where it covers no other box, else the short form, there or anywhere.
        attempts = [(anchors, t) for t in texts] + [((), texts[-1])]
        for avoid, (text, w, h, _) in attempts:
            (spot,) = place_labels([anchor], [(w, h)], image_size, placed, avoid)
            if spot is not None:
                placed.append(spot)
                chosen = (text, spot)
                break
        layout.append((g, box, *chosen))
    return layout


def draw_groundings(pixels: np.ndarray, groundings: Sequence[PhraseBoxes], scale: float = 1.0) -> Image.Image:
    """Draw every phrase's boxes (xyxy original pixels, times ``scale`` to reach ``pixels``)
    in its colour, each with its label where :func:`layout_labels` finds room; returns a new
    RGB PIL image. A phrase without boxes draws nothing."""
    image = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 250))
    font = label_font(image.size)
    layout = layout_labels(image.size, groundings, scale)
    for g, box, _, _ in layout:
        draw.rectangle(list(box), outline=g.color, width=line)
    for g, _, text, spot in layout:
        if spot is not None:
            top = draw.textbbox((0, 0), text, font=font)[1]
            draw.rectangle([spot[0], spot[1], spot[2] - 1, spot[3] - 1], fill=g.color)
            draw.text((spot[0] + LABEL_PADDING, spot[1] + LABEL_PADDING - top), text, fill=(255, 255, 255), font=font)
    return image


def draw_boxes(pixels: np.ndarray, results: Sequence, scale: float = 1.0, labels: Sequence[str] | None = None) -> Image.Image:
    """Draw each result's box (a :class:`~simvg.inference.GroundingResult`: xyxy original
    pixels, times ``scale`` to reach ``pixels``) with its own colour and a label ("<text>
    <score>" unless ``labels`` are given); returns a new RGB PIL image."""
    groundings = [
        PhraseBoxes(labels[i] if labels is not None else f"{r.text} {r.score:.2f}", [(r.box, r.score)], box_color(i),
                    short=str(i + 1))  # fmt: skip
        for i, r in enumerate(results)
    ]
    return draw_groundings(pixels, groundings, scale)
