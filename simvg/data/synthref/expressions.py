"""Finding every referring program that a scene supports, fast.

`find_programs` enumerates, for each expression type, which object each valid program
denotes. It reuses the predicates of `programs` but works on bitmasks of object indices and
precomputed per-object/per-pair classes, so a scene costs well under a millisecond. Every
program that is finally used is re-checked with the reference `programs.evaluate`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    extreme,
    nearest,
    region_class,
    size_safe,
)

# Size comparisons are supported by fewer pairs than position ones; favour them when possible.
FAMILY_WEIGHTS: dict[str, float] = {"size": 3.0}
Key = tuple  # (size, color, shape), None where unspecified
# A candidate program before it is materialised: (op, target key, arg, landmark object index).
Option = tuple


@dataclass
class ProgramTable:
    """Valid programs of one scene: `options[type][target index]` lists candidate programs."""

    objs: Sequence[Obj]
    side: float
    landmark_keys: dict[int, list[Key]] = field(default_factory=dict)
    options: dict[str, dict[int, list[Option]]] = field(default_factory=dict)

    def targets(self, type_: str) -> list[int]:
        """Indices of the objects that have at least one program of `type_`, ascending."""
        return sorted(self.options.get(type_, {}))

    def types_for(self, target: int) -> list[str]:
        return [t for t, by_target in self.options.items() if by_target.get(target)]

    def choose(
        self, type_: str, target: int, rng: random.Random, avoid: set | None = None
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
        got = evaluate(program, self.objs, self.side)
        if got != target:
            raise RuntimeError(f"program {program} denotes {got}, expected {target}")
        return program


def _family(option: Option) -> str:
    """Groups of arguments drawn as one: sizes vs. horizontal vs. vertical comparisons,
    directions vs. distances, extremes vs. regions."""
    op, arg = option[0], option[2]
    if op == "compare":
        return {"bigger": "size", "smaller": "size", "left": "x", "right": "x"}.get(arg, "y")
    if op == "relate":
        return "distance" if arg in ("closest", "farthest") else "direction"
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


def find_programs(objs: Sequence[Obj], side: float, types: Sequence[str]) -> ProgramTable:
    """Enumerate the programs of the given expression `types` that denote exactly one object.

    `side` is the image side in pixels. Programs are restricted to non-degenerate ones: a
    location, relation or comparison phrase must be needed (its noun phrase alone matches at
    least two objects), and attribute phrases use a minimal attribute set.
    """
    n = len(objs)
    table = ProgramTable(objs, side, options={t: {} for t in types})

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
    # Deterministic iteration order (dict order already is, but make it explicit and stable).
    keys = sorted(masks, key=lambda k: tuple("" if a is None else a for a in k))

    unique: dict[int, list[Key]] = {}
    for key in keys:
        m = masks[key]
        if m.bit_count() == 1 and all(
            sub not in masks or masks[sub].bit_count() > 1 for sub in _subkeys(key)
        ):
            unique.setdefault(m.bit_length() - 1, []).append(key)
    table.landmark_keys = unique

    def add(type_: str, target: int, option: Option) -> None:
        table.options[type_].setdefault(target, []).append(option)

    if "attribute" in types:
        for target, ks in unique.items():
            for key in ks:
                add("attribute", target, ("unique", key, None, None))

    multi = [k for k in keys if masks[k].bit_count() >= 2]
    if "location" in types:
        region_pos = {r: 0 for r in REGIONS}
        region_amb = {r: 0 for r in REGIONS}
        for i, o in enumerate(objs):
            for r in REGIONS:
                c = region_class(o, r, side)
                if c == POS:
                    region_pos[r] |= 1 << i
                elif c == AMB:
                    region_amb[r] |= 1 << i
        cache: dict[int, list[tuple[str, int]]] = {}
        for key in multi:
            m = masks[key]
            if m not in cache:
                members = _bits(m)
                found = []
                for d in EXTREMES:
                    t = extreme(objs, members, d, side)
                    if t is not None:
                        found.append(("extreme", d, t))
                for r in REGIONS:
                    pos = m & region_pos[r]
                    if not m & region_amb[r] and pos.bit_count() == 1:
                        found.append(("region", r, pos.bit_length() - 1))
                cache[m] = found
            for op, arg, t in cache[m]:
                add("location", t, (op, key, arg, None))

    if "relation" in types:
        directional = RELATIONS[:4]
        pos_m = [[0] * 4 for _ in range(n)]
        amb_m = [[0] * 4 for _ in range(n)]
        for lm in unique:
            for i, o in enumerate(objs):
                if i == lm:
                    continue
                for r, rel in enumerate(directional):
                    c = direction_class(o, objs[lm], rel, side)
                    if c == POS:
                        pos_m[lm][r] |= 1 << i
                    elif c == AMB:
                        amb_m[lm][r] |= 1 << i
        near_cache: dict[tuple[int, int, bool], int | None] = {}
        for lm in unique:
            for key in multi:
                cands = masks[key] & ~(1 << lm)
                if not cands:
                    continue
                for r, rel in enumerate(directional):
                    pos = cands & pos_m[lm][r]
                    if not cands & amb_m[lm][r] and pos.bit_count() == 1:
                        add("relation", pos.bit_length() - 1, ("relate", key, rel, lm))
                if cands.bit_count() >= 2:
                    for rel in ("closest", "farthest"):
                        ck = (lm, cands, rel == "farthest")
                        if ck not in near_cache:
                            near_cache[ck] = nearest(objs, _bits(cands), lm, side, far=ck[2])
                        t = near_cache[ck]
                        if t is not None:
                            add("relation", t, ("relate", key, rel, lm))

    if "comparison" in types:
        for key in multi:
            m = masks[key]
            if m.bit_count() != 2:
                continue
            pair = _bits(m)
            for arg in COMPARISONS:
                t = compare(objs, pair, arg, side)
                if t is not None:
                    add("comparison", t, ("compare", key, arg, None))
    return table
