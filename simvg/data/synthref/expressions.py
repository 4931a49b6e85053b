"""Finding every referring program that a scene supports, fast.

`find_programs` enumerates, for each expression type, which object (or, for SynthRef-G's set
types, which set of objects) each valid program denotes: one small finder per type, all
reading one `SceneIndex` of bitmasks of object indices and precomputed per-object/per-pair
classes, so a scene costs well under a millisecond. The finders reuse the predicates of
`programs`; every program that is finally used is re-checked with the reference
`programs.evaluate` (or `programs.evaluate_set`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .programs import (
    AMB,
    COMPARISONS,
    EXTREMES,
    POS,
    REGIONS,
    RELATIONS,
    Desc,
    Obj,
    Program,
    compare,
    direction_class,
    evaluate,
    evaluate_set,
    extreme,
    nearest,
    region_class,
    size_safe,
)
from .vocabulary import COLORS, SHAPES

# Size comparisons are supported by fewer pairs than position ones; favour them when possible.
FAMILY_WEIGHTS: dict[str, float] = {"size": 3.0}
Key = tuple  # (size, color, shape), None where unspecified
# A candidate program before it is materialised: (op, target key, arg, landmark object index).
Option = tuple
# What a program denotes: an object index (single-target types) or a tuple of indices, in
# ascending order, possibly empty (set types).
Target = int | tuple


@dataclass
class ProgramTable:
    """Valid programs of one scene: `options[type][target]` lists candidate programs."""

    objs: Sequence[Obj]
    side: float
    landmark_keys: dict[int, list[Key]] = field(default_factory=dict)
    options: dict[str, dict[Target, list[Option]]] = field(default_factory=dict)

    def targets(self, type_: str) -> list[Target]:
        """The targets (objects, or sets of objects) that have a program of `type_`, ascending."""
        return sorted(self.options.get(type_, {}))

    def types_for(self, target: Target) -> list[str]:
        return [t for t, by_target in self.options.items() if by_target.get(target)]

    def choose(
        self, type_: str, target: Target, rng: random.Random, avoid: set | None = None
    ) -> Program | None:
        """Draw one program of `type_` that denotes `target`.

        A family of operators is drawn (see `_family`, `FAMILY_WEIGHTS`), then an argument uniformly
        (so e.g. all four directions are equally common), then a noun phrase, fewer attributes
        preferred. Options in `avoid` are skipped; the chosen one is added to it.
        """
        opts = [
            o for o in self.options.get(type_, {}).get(target, []) if not avoid or o not in avoid
        ]
        if not opts:
            return None
        families = sorted({_family(o) for o in opts})
        family = rng.choices(families, [FAMILY_WEIGHTS.get(f, 1.0) for f in families])[0]
        opts = [o for o in opts if _family(o) == family]
        op_arg = rng.choice(sorted({(o[0], o[2] or "") for o in opts}))
        opts = [o for o in opts if (o[0], o[2] or "") == op_arg]
        weights = [0.5 ** sum(a is not None for a in o[1]) for o in opts]
        op, key, arg, lm = rng.choices(opts, weights)[0]
        landmark = None
        if lm is not None:
            landmark = Desc(*rng.choice(self.landmark_keys[lm]))
        program = Program(op, Desc(*key), arg, landmark)
        if avoid is not None:
            avoid.add((op, key, arg, lm))
        if isinstance(target, tuple):
            got = evaluate_set(program, self.objs, self.side)
            if got != list(target):
                raise RuntimeError(f"program {program} denotes {got}, expected {list(target)}")
        else:
            got = evaluate(program, self.objs, self.side)
            if got != target:
                raise RuntimeError(f"program {program} denotes {got}, expected {target}")
        return program


def _family(option: Option) -> str:
    """Groups of arguments drawn as one: sizes vs. horizontal vs. vertical comparisons,
    directions vs. distances, extremes vs. regions; set descriptions naming colour and shape
    vs. fewer attributes ("the purple star" vs. "the star"), so both are common."""
    op, arg = option[0], option[2]
    if op == "compare":
        return {"bigger": "size", "smaller": "size", "left": "x", "right": "x"}.get(arg, "y")
    if op == "relate":
        return "distance" if arg in ("closest", "farthest") else "direction"
    if op == "all":
        return "all_colour_shape" if option[1][1] is not None and option[1][2] is not None else "all"
    return op


def _bits(mask: int) -> list[int]:
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def _subkeys(key: Key) -> list[Key]:
    """Keys with exactly one of `key`'s specified attributes dropped."""
    return [key[:i] + (None,) + key[i + 1 :] for i in range(3) if key[i] is not None]


class SceneIndex:
    """What the finders share about one scene: for every usable noun-phrase key (a size word
    only where it separates sizes) the bitmask of the objects it matches, the keys in a fixed
    order, and the minimal keys that pick out each object alone (its landmark descriptions)."""

    def __init__(self, objs: Sequence[Obj], side: float):
        self.objs, self.side, self.n = objs, side, len(objs)
        masks: dict[Key, int] = {}
        for i, o in enumerate(objs):
            for sz in (None, o.size):
                for c in (None, o.color):
                    for sh in (None, o.shape):
                        masks[(sz, c, sh)] = masks.get((sz, c, sh), 0) | (1 << i)
        safe_rest: dict[Key, bool] = {}
        for key in list(masks):
            if key[0] is not None:
                rest = (None, key[1], key[2])
                if rest not in safe_rest:
                    safe_rest[rest] = size_safe(objs, Desc("large", key[1], key[2]))
                if not safe_rest[rest]:
                    del masks[key]
        self.masks = masks
        # Deterministic iteration order (dict order already is, but make it explicit and stable).
        self.keys = sorted(masks, key=lambda k: tuple("" if a is None else a for a in k))
        self.unique: dict[int, list[Key]] = {}
        for key in self.keys:
            m = masks[key]
            if m.bit_count() == 1 and all(
                sub not in masks or masks[sub].bit_count() > 1 for sub in _subkeys(key)
            ):
                self.unique.setdefault(m.bit_length() - 1, []).append(key)
        self.multi = [k for k in self.keys if masks[k].bit_count() >= 2]

    @cached_property
    def regions(self) -> dict[str, tuple[int, int]]:
        """Region -> (mask of objects clearly inside, mask of objects too close to call)."""
        out = {}
        for r in REGIONS:
            pos = amb = 0
            for i, o in enumerate(self.objs):
                c = region_class(o, r, self.side)
                if c == POS:
                    pos |= 1 << i
                elif c == AMB:
                    amb |= 1 << i
            out[r] = (pos, amb)
        return out

    @cached_property
    def directions(self) -> tuple[list[list[int]], list[list[int]]]:
        """Masks [landmark][direction] of the objects clearly (and possibly) in each of the four
        directions ("left", "right", "above", "below") of each uniquely describable object."""
        pos_m = [[0] * 4 for _ in range(self.n)]
        amb_m = [[0] * 4 for _ in range(self.n)]
        for lm in self.unique:
            for i, o in enumerate(self.objs):
                if i == lm:
                    continue
                for r, rel in enumerate(RELATIONS[:4]):
                    c = direction_class(o, self.objs[lm], rel, self.side)
                    if c == POS:
                        pos_m[lm][r] |= 1 << i
                    elif c == AMB:
                        amb_m[lm][r] |= 1 << i
        return pos_m, amb_m


Finding = Iterator[tuple[Target, Option]]


# --- single-target types: each phrase denotes exactly one object --------------------------------


def _attribute(ix: SceneIndex) -> Finding:
    """"the red circle": a minimal description that only one object matches."""
    for target, ks in ix.unique.items():
        for key in ks:
            yield target, ("unique", key, None, None)


def _location(ix: SceneIndex) -> Finding:
    """"the leftmost circle", "the circle on the left": a description matching two or more
    objects, narrowed to one by an extreme or a region."""
    cache: dict[int, list[tuple[str, str, int]]] = {}
    for key in ix.multi:
        m = ix.masks[key]
        if m not in cache:
            members = _bits(m)
            found = []
            for d in EXTREMES:
                t = extreme(ix.objs, members, d, ix.side)
                if t is not None:
                    found.append(("extreme", d, t))
            for r in REGIONS:
                region_pos, region_amb = ix.regions[r]
                pos = m & region_pos
                if not m & region_amb and pos.bit_count() == 1:
                    found.append(("region", r, pos.bit_length() - 1))
            cache[m] = found
        for op, arg, t in cache[m]:
            yield t, (op, key, arg, None)


def _relation(ix: SceneIndex) -> Finding:
    """"the circle left of the red square", "the circle closest to the star"."""
    pos_m, amb_m = ix.directions
    near_cache: dict[tuple[int, int, bool], int | None] = {}
    for lm in ix.unique:
        for key in ix.multi:
            cands = ix.masks[key] & ~(1 << lm)
            if not cands:
                continue
            for r, rel in enumerate(RELATIONS[:4]):
                pos = cands & pos_m[lm][r]
                if not cands & amb_m[lm][r] and pos.bit_count() == 1:
                    yield pos.bit_length() - 1, ("relate", key, rel, lm)
            if cands.bit_count() >= 2:
                for rel in ("closest", "farthest"):
                    ck = (lm, cands, rel == "farthest")
                    if ck not in near_cache:
                        near_cache[ck] = nearest(ix.objs, _bits(cands), lm, ix.side, far=ck[2])
                    t = near_cache[ck]
                    if t is not None:
                        yield t, ("relate", key, rel, lm)


def _comparison(ix: SceneIndex) -> Finding:
    """"the bigger of the two circles": a description matching exactly two objects."""
    for key in ix.multi:
        m = ix.masks[key]
        if m.bit_count() != 2:
            continue
        pair = _bits(m)
        for arg in COMPARISONS:
            t = compare(ix.objs, pair, arg, ix.side)
            if t is not None:
                yield t, ("compare", key, arg, None)


# --- set types (SynthRef-G): each phrase denotes two or more objects, or none -------------------


def _multi_attribute(ix: SceneIndex) -> Finding:
    """"all the red circles": a description (naming at least one attribute) that matches two
    or more objects but not every object."""
    everything = (1 << ix.n) - 1
    for key in ix.multi:
        m = ix.masks[key]
        if key != (None, None, None) and m != everything:
            yield tuple(_bits(m)), ("all", key, None, None)


def _no_target_attribute(ix: SceneIndex) -> Finding:
    """"the purple star" where there is none: a colour and a shape that each occur in the
    scene but never together, or one colour or shape that does not occur at all. No size
    words: whether a lone large circle is "the small circle" is not clear-cut."""
    colours = {o.color for o in ix.objs}
    shapes = {o.shape for o in ix.objs}
    for colour in (None, *COLORS):
        for shape in (None, *SHAPES):
            key = (None, colour, shape)
            if key in ix.masks or key == (None, None, None):
                continue
            if colour is None or shape is None or (colour in colours and shape in shapes):
                yield (), ("all", key, None, None)


def _region_sets(ix: SceneIndex, keep: Callable[[int, int], bool]) -> Finding:
    for key in ix.keys:
        m = ix.masks[key]
        for r in REGIONS:
            region_pos, region_amb = ix.regions[r]
            if not m & region_amb and keep(m, m & region_pos):
                yield tuple(_bits(m & region_pos)), ("region_all", key, r, None)


def _multi_location(ix: SceneIndex) -> Finding:
    """"the circles on the left": two or more of the described objects clearly in a region,
    at least one clearly outside it, none too close to call."""
    yield from _region_sets(ix, lambda m, pos: pos.bit_count() >= 2 and m != pos)


def _no_target_location(ix: SceneIndex) -> Finding:
    """"the circle on the left" where every circle is clearly elsewhere."""
    yield from _region_sets(ix, lambda m, pos: pos == 0)


def _relation_sets(ix: SceneIndex, keep: Callable[[int, int], bool]) -> Finding:
    pos_m, amb_m = ix.directions
    for lm in ix.unique:
        for key in ix.keys:
            cands = ix.masks[key] & ~(1 << lm)
            if not cands:
                continue
            for r, rel in enumerate(RELATIONS[:4]):
                pos = cands & pos_m[lm][r]
                if not cands & amb_m[lm][r] and keep(cands, pos):
                    yield tuple(_bits(pos)), ("relate_all", key, rel, lm)


def _multi_relation(ix: SceneIndex) -> Finding:
    """"the shapes left of the star": two or more of the described objects clearly in that
    direction of a uniquely described landmark, at least one clearly not, none too close."""
    yield from _relation_sets(ix, lambda cands, pos: pos.bit_count() >= 2 and cands != pos)


def _no_target_relation(ix: SceneIndex) -> Finding:
    """"the circle left of the star" where every circle is clearly not left of it."""
    yield from _relation_sets(ix, lambda cands, pos: pos == 0)


FINDERS: dict[str, Callable[[SceneIndex], Finding]] = {
    "attribute": _attribute,
    "location": _location,
    "relation": _relation,
    "comparison": _comparison,
    "multi_attribute": _multi_attribute,
    "multi_location": _multi_location,
    "multi_relation": _multi_relation,
    "no_target_attribute": _no_target_attribute,
    "no_target_location": _no_target_location,
    "no_target_relation": _no_target_relation,
}


def find_programs(objs: Sequence[Obj], side: float, types: Sequence[str]) -> ProgramTable:
    """Enumerate the programs of the given expression `types` (keys of `FINDERS`).

    `side` is the image side in pixels. Single-target types list the programs that denote
    exactly one object, set types those that denote exactly the listed set. Programs are
    restricted to non-degenerate ones: a location, relation or comparison phrase must be
    needed (its noun phrase alone does not already denote the same), and attribute phrases
    use a minimal attribute set.
    """
    ix = SceneIndex(objs, side)
    table = ProgramTable(objs, side, landmark_keys=ix.unique, options={t: {} for t in types})
    for type_ in types:
        options = table.options[type_]
        for target, option in FINDERS[type_](ix):
            options.setdefault(target, []).append(option)
    return table
