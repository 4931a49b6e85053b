"""The closed world of SynthRef: shapes, colours, sizes, splits and the words that name them."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "diamond": "diamonds",
    "cross": "crosses",
    "shape": "shapes",
    "object": "objects",
}
# Saturated, well-separated hues (about 0, 28, 50, 135, 185, 225 and 280 degrees).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 130, 20),
    "yellow": (240, 215, 25),
    "green": (35, 165, 55),
    "cyan": (25, 195, 215),
    "blue": (35, 75, 220),
    "purple": (140, 50, 190),
}
COLOR_JITTER = 12  # max per-channel offset added to an object's colour, in 0..255 units

SIZES: tuple[str, ...] = ("small", "large")
# Nominal side of an object's square frame, as a fraction of the image side. Large is about
# twice small, so a 256 px image downscaled to 160 px still shows small objects at 16-21 px.
SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.10, 0.13), "large": (0.20, 0.25)}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")
# Every horizontal word the phrases use: a horizontal flip must swap these whole words
# (note "leftmost"/"rightmost", which a plain \bleft\b replacement would miss).
FLIP_WORDS: dict[str, str] = {
    "left": "right",
    "right": "left",
    "leftmost": "rightmost",
    "rightmost": "leftmost",
}

EXPRESSION_TYPES: tuple[str, ...] = ("attribute", "location", "relation", "comparison")
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
# As in RefCOCO, the two test splits are two distributions: testA asks for what an object is
# and where it lies, testB for how it relates to another object.
SPLIT_TYPES: dict[str, tuple[str, ...]] = {
    "train": EXPRESSION_TYPES,
    "val": EXPRESSION_TYPES,
    "testA": ("attribute", "location"),
    "testB": ("relation", "comparison"),
}
