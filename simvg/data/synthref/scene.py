"""A SynthRef scene: objects with attributes and pixel boxes, sampled with limited occlusion."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image

from .backgrounds import make_background
from .shapes import MAX_ROTATION_DEG, draw_mask
from .vocabulary import COLOR_JITTER, COLORS, SHAPES, SIZE_RANGE, SIZES

MIN_OBJECTS, MAX_OBJECTS = 3, 8
MAX_OVERLAP = 0.10  # max intersection of two boxes, as a fraction of the smaller box's area
BORDER = 2  # pixels kept free between any box and the image edge
_PLACE_TRIES = 40
# Distractors share attributes with each other, so that one word rarely singles out an object:
# each scene draws its objects from a small palette of shapes and colours (both sizes), plus
# the odd object drawn from everything.
PALETTE_SIZES: dict[int, tuple[int, int]] = {
    3: (1, 2),
    4: (1, 2),
    5: (2, 2),
    6: (2, 2),
    7: (2, 3),
    8: (2, 3),
}
OUTLIER_PROB = 0.1


@dataclass
class SceneObject:
    """One drawn object. `box` is the tight pixel box (x0, y0, x1, y1), x1/y1 exclusive."""

    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]
    mask: Image.Image = field(repr=False)
    origin: tuple[int, int] = (0, 0)  # where the mask's top-left corner goes in the image

    def xywh(self) -> list[float]:
        """COCO box [x, y, w, h] in pixels."""
        x0, y0, x1, y1 = self.box
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    def as_dict(self) -> dict:
        return {"bbox": self.xywh(), "shape": self.shape, "color": self.color, "size": self.size}


def overlap_fraction(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area, for xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / small


def _palette(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    lo, hi = PALETTE_SIZES[n]  # numbers of shapes and of colours, for n objects
    return rng.sample(SHAPES, rng.randint(lo, hi)), rng.sample(tuple(COLORS), rng.randint(lo, hi))


def _attributes(rng: random.Random, palette: tuple[list[str], list[str]]) -> tuple[str, str, str]:
    if rng.random() < OUTLIER_PROB:
        return rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(SIZES)
    return rng.choice(palette[0]), rng.choice(palette[1]), rng.choice(SIZES)


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in rgb)


def _place(rng: random.Random, obj: SceneObject, placed: list[SceneObject], size: int) -> bool:
    x0, y0, x1, y1 = obj.box  # box inside the mask
    lo_x, hi_x = BORDER - x0, size - BORDER - x1
    lo_y, hi_y = BORDER - y0, size - BORDER - y1
    if hi_x < lo_x or hi_y < lo_y:
        return False
    for _ in range(_PLACE_TRIES):
        ox, oy = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
        box = (x0 + ox, y0 + oy, x1 + ox, y1 + oy)
        if all(overlap_fraction(box, p.box) <= MAX_OVERLAP for p in placed):
            obj.box, obj.origin = box, (ox, oy)
            return True
    return False


def sample_objects(rng: random.Random, size: int) -> list[SceneObject]:
    """Sample 3-8 objects for a `size` x `size` image; boxes are in pixels."""
    while True:
        want = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
        palette = _palette(rng, want)
        placed: list[SceneObject] = []
        for _ in range(want + 4):
            if len(placed) == want:
                break
            shape, color, size_name = _attributes(rng, palette)
            side = rng.uniform(*SIZE_RANGE[size_name]) * size
            angle = rng.uniform(-1.0, 1.0) * MAX_ROTATION_DEG[shape]
            mask, box = draw_mask(shape, side, angle)
            obj = SceneObject(shape, color, size_name, _jitter(COLORS[color], rng), box, mask)
            if _place(rng, obj, placed, size):
                placed.append(obj)
        if len(placed) >= MIN_OBJECTS:
            return placed


def render(rng: random.Random, objects: list[SceneObject], size: int) -> Image.Image:
    """Draw `objects` (in list order, later ones on top) over a random background."""
    image = make_background(rng, size)
    for obj in objects:
        w, h = obj.mask.size
        ox, oy = obj.origin
        image.paste(obj.rgb, (ox, oy, ox + w, oy + h), obj.mask)
    return image
