"""Low-saturation backgrounds: solid, gradient, noise, stripes and checkerboard.

Every background is a blend of two muted colours c1, c2 through a grey modulation image m
(pixel = c1 + (c2 - c1) * m / 255), so its chroma (max minus min channel) stays small and
each object colour in `vocabulary.COLORS` stands out by hue whatever its brightness. The
modulation images are precomputed once per image size (a bank of tiles, varied by the 8
flips/transposes), which keeps a background at a fraction of a millisecond.
"""

from __future__ import annotations

import colorsys
import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image

KINDS: tuple[str, ...] = ("solid", "gradient", "noise", "stripes", "checker")
KIND_WEIGHTS: tuple[float, ...] = (0.15, 0.25, 0.2, 0.2, 0.2)
_RAMP = np.arange(256, dtype=np.float32) / 255.0
_TRANSPOSES = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def muted_color(rng: random.Random) -> tuple[float, float, float]:
    """A random low-saturation colour, RGB floats in 0..255."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.16), rng.uniform(0.38, 0.78))
    return r * 255.0, g * 255.0, b * 255.0


def _shifted(color: tuple[float, float, float], delta: float) -> tuple[float, float, float]:
    """`color` made lighter (delta > 0) or darker by `delta` grey levels, chroma unchanged."""
    if not 20.0 <= max(color) + delta <= 235.0:
        delta = -delta
    return tuple(c + delta for c in color)


def _to_p(arr: np.ndarray) -> Image.Image:
    """Modulation in 0..1 as a palette image; the palette (set per use) maps it to colours."""
    grey = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return Image.frombytes("P", grey.size, grey.tobytes())


@lru_cache(maxsize=4)
def _bank(size: int) -> dict[str, tuple[Image.Image, ...]]:
    """Modulation tiles for one image size. Fixed seed: identical in every process."""
    gen = np.random.default_rng(20240617)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramps = []
    for k in range(4):  # 4 base directions x 8 transposes give 16 gradient directions
        a = k * math.pi / 8
        t = math.cos(a) * xs + math.sin(a) * ys
        ramps.append(_to_p((t - t.min()) / (t.max() - t.min())))
    noise = []
    for _ in range(6):
        field = np.zeros((size, size), dtype=np.float32)
        for cells, weight in ((4, 0.5), (12, 0.3), (max(size // 4, 16), 0.2)):
            low = Image.fromarray(gen.standard_normal((cells, cells)).astype(np.float32))
            field += weight * np.asarray(low.resize((size, size), Image.Resampling.BICUBIC))
        field = (field - field.min()) / (field.max() - field.min())
        noise.append(_to_p(field))
    stripes = []
    for period in (0.03, 0.045, 0.06, 0.08, 0.1):
        for a in (0.0, math.pi / 4, math.pi / 6):
            phase = (math.cos(a) * xs + math.sin(a) * ys) / period
            stripes.append(_to_p(((phase % 1.0) < 0.5).astype(np.float32)))
    checker = []
    for cell in (0.04, 0.055, 0.07, 0.09, 0.12):
        checker.append(_to_p((((xs // cell + ys // cell) % 2) == 0).astype(np.float32)))
    return {
        "gradient": tuple(ramps),
        "noise": tuple(noise),
        "stripes": tuple(stripes),
        "checker": tuple(checker),
    }


def make_background(rng: random.Random, size: int) -> Image.Image:
    """A `size` x `size` pixel RGB background of one of `KINDS`, all choices drawn from `rng`."""
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    c1 = muted_color(rng)
    if kind == "solid":
        return Image.new("RGB", (size, size), tuple(int(c + 0.5) for c in c1))
    if kind == "gradient":
        c2 = muted_color(rng)
    elif kind == "noise":
        amp = rng.uniform(8.0, 22.0)
        c1, c2 = _shifted(c1, -amp), _shifted(c1, amp)
    else:
        c2 = _shifted(c1, rng.uniform(8.0, 22.0) * rng.choice((-1, 1)))
    tile = rng.choice(_bank(size)[kind])
    flip = rng.choice(_TRANSPOSES)
    tile = tile.transpose(flip) if flip is not None else tile.copy()  # copy: palette is per use
    lo, hi = np.array(c1, dtype=np.float32), np.array(c2, dtype=np.float32)
    palette = lo + (hi - lo) * _RAMP[:, None]
    tile.putpalette(np.clip(palette + 0.5, 0, 255).astype(np.uint8).tobytes())
    return tile.convert("RGB")
