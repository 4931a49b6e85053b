"""SynthRef-G: SynthRef scenes with phrases that denote one object, several objects, or none.

Each image gets one or two records. A record is a referent set with 1-3 phrases that all
denote exactly that set. Its kind is drawn per record: single target (`SINGLE_SHARE`, the
four SynthRef types, programs as SynthRef's), multi-target (`MULTI_SHARE`: "all the red
circles", "the two circles on the left", "the shapes left of the star") or no target
(`NO_TARGET_SHARE`: "the purple star" where there is none, "the circle on the left" where
every circle is on the right, "the circle above the star" where none is). Multi-target
records get fewer phrases (a set has fewer descriptions than an object), so these record
shares (0.45 / 0.30 / 0.25) give about half single-target phrases and a quarter each of
multi-target and no-target ones. Every phrase is checked against the scene with
`programs.evaluate` / `programs.evaluate_set`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from types import MappingProxyType

from PIL import Image

from .expressions import ProgramTable, Target, find_programs
from .generate import N_EXPRESSIONS_WEIGHTS, SECOND_REF_PROB, _record
from .programs import Program, evaluate_set, set_type
from .scene import render, sample_objects
from .text import realise_set
from .vocabulary import MULTI_TYPES, NO_TARGET_TYPES, SPLIT_SET_TYPES, SPLIT_TYPES

SINGLE_SHARE, MULTI_SHARE, NO_TARGET_SHARE = 0.45, 0.30, 0.25
KIND_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"single": SINGLE_SHARE, "multi": MULTI_SHARE, "no_target": NO_TARGET_SHARE}
)
_SCENE_TRIES = 25


def generalized_image_seed(seed: int, split: str, index: int) -> int:
    """Seed of image `index` of `split`: the first 8 bytes (little-endian) of
    BLAKE2b("synthref-g:<seed>:<split>:<index>") (SynthRef's own images use "synthref:")."""
    digest = hashlib.blake2b(f"synthref-g:{seed}:{split}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def kind_types(kind: str, split: str) -> tuple[str, ...]:
    """The expression types of a record kind in `split`."""
    if kind == "single":
        return SPLIT_TYPES[split]
    family = MULTI_TYPES if kind == "multi" else NO_TARGET_TYPES
    return tuple(t for t in SPLIT_SET_TYPES[split] if t in family)


def _set_record(table: ProgramTable, target: tuple, first_type: str, types: tuple[str, ...],
                rng: random.Random) -> dict:  # fmt: skip
    """Phrases for one referent set (two or more objects, or none): the first of `first_type`,
    then up to two more, of other types where the scene allows, else other phrases of the
    types already used."""
    k = rng.choices((1, 2, 3), N_EXPRESSIONS_WEIGHTS)[0]
    others = [t for t in types if t != first_type and t in table.types_for(target)]
    chosen = [first_type] + rng.sample(others, min(k - 1, len(others)))
    avoid: set = set()
    programs: list[Program] = []
    for t in chosen:
        p = table.choose(t, target, rng, avoid)
        if p is not None:
            programs.append(p)
    while len(programs) < k:  # not enough distinct types: repeat a type with another program
        p = table.choose(rng.choice(chosen), target, rng, avoid)
        if p is None:
            break
        programs.append(p)
    texts, stated = [], []
    for p in programs:
        text, p = realise_set(p, rng, len(target))
        if evaluate_set(p, table.objs, table.side) != list(target):  # the stated count too
            raise RuntimeError(f"program {p} ({text!r}) does not denote {list(target)}")
        texts.append(text)
        stated.append(p)
    return {
        "target_indices": list(target),
        "expressions": texts,
        "expression_types": [set_type(p.op, len(target)) for p in stated],
        "programs": [p.as_dict() for p in stated],
        "category": None,
    }


def _kind_record(table: ProgramTable, kind: str, target: Target, first_type: str, split: str,
                 rng: random.Random) -> dict:  # fmt: skip
    if kind == "single":
        part = _record(table, target, first_type, SPLIT_TYPES[split], rng)
        return {
            "target_indices": [part["target_index"]],
            "expressions": part["expressions"],
            "expression_types": part["expression_types"],
            "programs": part["programs"],
            "category": part["category"],
        }
    return _set_record(table, target, first_type, kind_types(kind, split), rng)


def make_generalized_example(
    seed: int, split: str, index: int, image_size: int
) -> tuple[Image.Image, list[dict], list[dict]]:
    """Generate image `index` of `split` of SynthRef-G.

    Returns the RGB image (`image_size` pixels square), the records' parts (`target_indices`
    into the objects, `expressions`, `expression_types`, `programs`, `category` of a single
    target else None) and the list of all objects as dicts.
    """
    rng = random.Random(generalized_image_seed(seed, split, index))
    kinds = list(KIND_WEIGHTS)
    kind = rng.choices(kinds, list(KIND_WEIGHTS.values()))[0]
    allowed = kind_types(kind, split)
    every_type = SPLIT_TYPES[split] + SPLIT_SET_TYPES[split]
    first_type = rng.choice(allowed)
    for attempt in range(1000):
        objs = sample_objects(rng, image_size)
        table = find_programs(objs, image_size, every_type)
        if table.targets(first_type):
            break
        if attempt >= _SCENE_TRIES:  # rare: settle for another type of the kind
            found = [t for t in allowed if table.targets(t)]
            if found:
                first_type = rng.choice(found)
                break
    else:
        raise RuntimeError(f"no {kind} phrase found for {split}[{index}]")

    target = rng.choice(table.targets(first_type))
    records = [_kind_record(table, kind, target, first_type, split, rng)]
    if rng.random() < SECOND_REF_PROB:
        second = rng.choices(kinds, list(KIND_WEIGHTS.values()))[0]
        second_types = list(kind_types(second, split))
        rng.shuffle(second_types)
        for t in second_types:
            cands = [c for c in table.targets(t) if c != target]
            if cands:
                records.append(_kind_record(table, second, rng.choice(cands), t, split, rng))
                break
    image = render(rng, objs, image_size)
    return image, records, [o.as_dict() for o in objs]
