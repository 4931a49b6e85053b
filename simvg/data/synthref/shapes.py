"""Rasterising one shape into an anti-aliased alpha mask."""

from __future__ import annotations

import math
from functools import cache

from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # masks are drawn at 4x and box-filtered down: smooth edges at small sizes
_HALF_COVER_LUT = [0] * 128 + [255] * 128  # alpha >= 128 counts as "drawn" for the tight box


def _star(points: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    verts = []
    for k in range(2 * points):
        r = 0.5 if k % 2 == 0 else 0.5 * inner
        a = -math.pi / 2 + k * math.pi / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


def _cross(t: float = 0.36) -> list[tuple[float, float]]:
    a, b = t / 2, 0.5
    return [
        (-a, -b),
        (a, -b),
        (a, -a),
        (b, -a),
        (b, a),
        (a, a),
        (a, b),
        (-a, b),
        (-a, a),
        (-b, a),
        (-b, -a),
        (-a, -a),
    ]


# Outlines in a unit frame centred on the origin (x right, y down), extent at most +-0.5.
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.44, -0.44), (0.44, -0.44), (0.44, 0.44), (-0.44, 0.44)],
    "triangle": [(0.0, -0.47), (0.5, 0.43), (-0.5, 0.43)],
    "star": _star(),
    "diamond": [(0.0, -0.5), (0.36, 0.0), (0.0, 0.5), (-0.36, 0.0)],
    "cross": _cross(),
}


def _polygon_fill(pts: list[tuple[float, float]]) -> float:
    """Polygon area over its bounding-box area (shoelace formula)."""
    area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])))
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    return area / ((max(xs) - min(xs)) * (max(ys) - min(ys)))


# Share of its (unrotated) box that a shape covers: a star looks smaller than a square with the
# same box, which matters when sizes of different shapes are compared.
FILL: dict[str, float] = {"circle": math.pi / 4} | {
    k: _polygon_fill(v) for k, v in POLYGONS.items()
}
MAX_ROTATION_DEG: dict[str, float] = {
    "circle": 0.0,
    "square": 8.0,
    "triangle": 8.0,
    "star": 15.0,
    "diamond": 6.0,
    "cross": 8.0,
}


@cache
def _frame(side_px: int) -> int:
    # Canvas side leaves room for rotation (up to 15 deg needs ~1.22x) plus a 2 px margin.
    return int(math.ceil(side_px * 1.25)) + 4


def draw_mask(
    shape: str, side: float, angle_deg: float
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw `shape` with a nominal frame of `side` pixels rotated by `angle_deg`.

    Returns the "L" alpha mask (shape centred in a square canvas) and the tight box of the
    drawn pixels (alpha >= 128) inside that canvas as (x0, y0, x1, y1), x1/y1 exclusive.
    """
    size = _frame(int(math.ceil(side)))
    ss = SUPERSAMPLE
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    c = size * ss / 2.0
    s = side * ss
    if shape == "circle":
        draw.ellipse((c - s / 2, c - s / 2, c + s / 2, c + s / 2), fill=255)
    else:
        a = math.radians(angle_deg)
        ca, sa = math.cos(a), math.sin(a)
        pts = [(c + s * (x * ca - y * sa), c + s * (x * sa + y * ca)) for x, y in POLYGONS[shape]]
        draw.polygon(pts, fill=255)
    mask = big.reduce(ss)
    box = mask.point(_HALF_COVER_LUT).getbbox()
    assert box is not None, "shape too small to draw"
    return mask, box
