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

# Numbers of objects a multi-target phrase may state ("the three circles"); scenes hold 3-8.
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

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
# SynthRef-G adds phrases that denote several objects or none, in three families each.
MULTI_TYPES: tuple[str, ...] = ("multi_attribute", "multi_location", "multi_relation")
NO_TARGET_TYPES: tuple[str, ...] = ("no_target_attribute", "no_target_location", "no_target_relation")
# The test splits keep their distributions: testA what and where, testB relations.
SPLIT_SET_TYPES: dict[str, tuple[str, ...]] = {
    "train": MULTI_TYPES + NO_TARGET_TYPES,
    "val": MULTI_TYPES + NO_TARGET_TYPES,
    "testA": ("multi_attribute", "multi_location", "no_target_attribute", "no_target_location"),
    "testB": ("multi_relation", "no_target_relation"),
}
