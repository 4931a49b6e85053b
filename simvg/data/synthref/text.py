"""Realising a referring program as an English phrase.

Each program maps to a few templates; every word is a whole word with one meaning in this
grammar (no colour, shape or direction word is a substring-variant of another), so a phrase
can be read back into its program unambiguously.
"""

from __future__ import annotations

import random
from dataclasses import replace

from .programs import Desc, Program
from .vocabulary import COUNT_WORDS, GENERIC_NOUNS, PLURALS, SIZE_WORDS

EXTREME_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the leftmost {np}", "the {np} furthest to the left", "the {np} on the far left"),
    "right": ("the rightmost {np}", "the {np} furthest to the right", "the {np} on the far right"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} at the very top"),
    "bottom": ("the lowest {np}", "the bottommost {np}", "the {np} at the very bottom"),
}
REGION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {np} on the left", "the {np} on the left side"),
    "right": ("the {np} on the right", "the {np} on the right side"),
    "top": ("the {np} at the top", "the {np} in the upper half"),
    "bottom": ("the {np} at the bottom", "the {np} in the lower half"),
    "middle": (
        "the {np} in the middle",
        "the {np} in the center",
        "the {np} in the center of the image",
    ),
}
QUADRANT_TEMPLATES: tuple[str, ...] = ("the {np} in the {r}", "the {np} at the {r}")
CORNER_TEMPLATES: tuple[str, ...] = ("the {np} in the {r} corner",)
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath", "under"),
    "closest": ("closest to", "nearest to", "nearest"),
    "farthest": ("farthest from", "furthest from"),
}
COMPARISON_TEMPLATES: dict[str, tuple[str, ...]] = {
    "bigger": (
        "the bigger of the two {pl}",
        "the larger of the two {pl}",
        "the bigger one of the two {pl}",
    ),
    "smaller": ("the smaller of the two {pl}", "the smaller one of the two {pl}"),
    "left": ("the left one of the two {pl}", "of the two {pl}, the one on the left"),
    "right": ("the right one of the two {pl}", "of the two {pl}, the one on the right"),
    "upper": (
        "the upper of the two {pl}",
        "the top one of the two {pl}",
        "the higher of the two {pl}",
    ),
    "lower": ("the lower of the two {pl}", "the bottom one of the two {pl}"),
}


def noun_phrase(desc: Desc, rng: random.Random, plural: bool = False) -> str:
    """'small red circle', 'blue shape', 'object', ... (plural: 'small red circles')."""
    noun = desc.shape if desc.shape is not None else rng.choice(GENERIC_NOUNS)
    words = []
    if desc.size is not None:
        words.append(rng.choice(SIZE_WORDS[desc.size]))
    if desc.color is not None:
        words.append(desc.color)
    words.append(PLURALS[noun] if plural else noun)
    return " ".join(words)


def realise(program: Program, rng: random.Random, corner: bool = False) -> str:
    """One phrase for `program`; `corner` allows "in the top left corner" for quadrants."""
    op, arg = program.op, program.arg
    if op == "unique":
        d = program.target
        u = rng.random()
        if d.color is not None and u < 0.15:
            rest = noun_phrase(Desc(d.size, None, d.shape), rng)
            return f"the {rest} that is {d.color}"
        np_ = noun_phrase(d, rng)
        return np_ if u < 0.4 else f"the {np_}"
    if op == "extreme":
        return rng.choice(EXTREME_TEMPLATES[arg]).format(np=noun_phrase(program.target, rng))
    if op == "region":
        np_ = noun_phrase(program.target, rng)
        if arg in REGION_TEMPLATES:
            return rng.choice(REGION_TEMPLATES[arg]).format(np=np_)
        templates = QUADRANT_TEMPLATES + (CORNER_TEMPLATES if corner else ())
        return rng.choice(templates).format(np=np_, r=arg)
    if op == "relate":
        assert program.landmark is not None
        words = rng.choice(RELATION_WORDS[arg])
        lead = "the " if rng.random() < 0.8 else ""
        target = noun_phrase(program.target, rng)
        return f"{lead}{target} {words} the {noun_phrase(program.landmark, rng)}"
    if op == "compare":
        pl = noun_phrase(program.target, rng, plural=True)
        return rng.choice(COMPARISON_TEMPLATES[arg]).format(pl=pl)
    raise ValueError(f"unknown op {op!r}")


def _plural_lead(rng: random.Random, n: int) -> tuple[str, int | None]:
    """How a phrase about `n` >= 2 objects starts: "the ", "all the ", "the three " or (two)
    "both ", and the count it states (None for "the" and "all the")."""
    u = rng.random()
    if u < 0.35:
        return "the ", None
    if u < 0.6:
        return "all the ", None
    if n == 2 and u < 0.8:
        return "both ", 2
    return f"the {COUNT_WORDS[n]} ", n


def realise_set(program: Program, rng: random.Random, n_targets: int) -> tuple[str, Program]:
    """One phrase for a set program that denotes `n_targets` objects, and the program with the
    count the phrase states. No target: a singular phrase ("the purple star", "the circle on
    the left", "the circle left of the star"); two or more: a plural one ("all the red
    circles", "the two circles on the left", "both squares above the star")."""
    single_op = {"all": "unique", "region_all": "region", "relate_all": "relate"}[program.op]
    if n_targets == 0:
        return realise(Program(single_op, program.target, program.arg, program.landmark), rng), program
    lead, count = _plural_lead(rng, n_targets)
    plural = noun_phrase(program.target, rng, plural=True)
    if program.op == "all":
        text = f"{lead}{plural}"
    elif program.op == "region_all":
        arg = program.arg
        templates = REGION_TEMPLATES.get(arg, QUADRANT_TEMPLATES)
        body = rng.choice(templates).removeprefix("the ")
        text = lead + body.format(np=plural, r=arg)
    else:
        assert program.landmark is not None
        words = rng.choice(RELATION_WORDS[program.arg])
        text = f"{lead}{plural} {words} the {noun_phrase(program.landmark, rng)}"
    return text, replace(program, count=count)
