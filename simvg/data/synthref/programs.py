"""Referring programs and their reference semantics.

A program is a noun-phrase filter (`Desc`) plus an operator that selects one object from the
objects the filter admits. `evaluate` is the single source of truth: it returns the index of
the object the program denotes, or None when the program denotes nothing, several objects, or
an object that a viewer could not pick out with confidence. Set programs (SynthRef-G: "all
the red circles", "the circle left of the star" where none is) select every object that
satisfies them; `evaluate_set` returns that set, possibly empty, or None when some object is
too close to call. All position tests work on box
centres and edges in units of the image side and leave a margin ("ambiguous band") between
what counts as true and what counts as false; a candidate inside that band makes the whole
program ambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .shapes import FILL

# Margins, as fractions of the image side unless stated otherwise.
EXTREME_GAP = 0.08  # "leftmost": centre beats the runner-up by this much ...
EDGE_GAP = 0.01  # ... and its near and far edges beat the runner-up's edges too
REGION_MARGIN = 0.06  # a centre must lie this far inside (target) or outside (others) a region
CENTER_HALF = 0.17  # the "middle" region is the central square of half-width 0.17
CORNER_REACH = 0.35  # the word "corner" is used only for centres this close to the corner
REL_MIN = 0.08  # "left of": displacement from the landmark along the direction >= this ...
REL_CONE_DEG = 40.0  # ... within this angle of the direction
REL_NEG = 0.02  # a candidate is clearly not "left of" when its displacement is <= this
NEAR_RATIO = 0.7  # "closest": nearest distance <= 0.7 x the second nearest ...
NEAR_GAP = 0.08  # ... and at least this much smaller (box gaps must agree in order too)
POS_GAP = 0.08  # "the left one of the two": centres this far apart, edges in the same order
SIZE_RATIO = 1.5  # size words need box-area and visual-area ratios >= this

POS, NEG, AMB = 1, 0, -1

OPS: dict[str, str] = {
    "unique": "attribute",
    "extreme": "location",
    "region": "location",
    "relate": "relation",
    "compare": "comparison",
}
# Set operators (SynthRef-G) and the expression family each belongs to; a set program's type is
# "multi_<family>" when it denotes two or more objects, "no_target_<family>" when none.
SET_OPS: dict[str, str] = {"all": "attribute", "region_all": "location", "relate_all": "relation"}
EXTREMES: tuple[str, ...] = ("left", "right", "top", "bottom")
REGIONS: tuple[str, ...] = (
    "left",
    "right",
    "top",
    "bottom",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "middle",
)
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below", "closest", "farthest")
COMPARISONS: tuple[str, ...] = ("bigger", "smaller", "left", "right", "upper", "lower")


class Obj(Protocol):
    """What the semantics needs from an object: attributes, a pixel box (x0, y0, x1, y1)."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Desc:
    """A noun-phrase filter; None means the attribute is not mentioned."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def matches(self, obj: Obj) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.color is None or obj.color == self.color)
            and (self.shape is None or obj.shape == self.shape)
        )

    def as_dict(self) -> dict:
        return {"size": self.size, "color": self.color, "shape": self.shape}


@dataclass(frozen=True)
class Program:
    """`op` in OPS or SET_OPS; `arg` names the direction/region/relation/comparison (None for
    unique and all); `count` (set ops only) is the number of objects the phrase states ("the
    two red circles", "both ..."), None when it states none."""

    op: str
    target: Desc
    arg: str | None = None
    landmark: Desc | None = None
    count: int | None = None

    @property
    def type(self) -> str:
        """The expression type of a single-object program (see `set_type` for set programs)."""
        return OPS[self.op]

    def as_dict(self) -> dict:
        out = {
            "op": self.op,
            "target": self.target.as_dict(),
            "arg": self.arg,
            "landmark": None if self.landmark is None else self.landmark.as_dict(),
        }
        if self.op in SET_OPS:
            out["count"] = self.count
        return out


def set_type(op: str, n_targets: int) -> str:
    """Expression type of a set program that denotes `n_targets` objects (0 or >= 2)."""
    if n_targets == 1:
        raise ValueError("a set program denoting one object has a single-target type")
    return f"{'no_target' if n_targets == 0 else 'multi'}_{SET_OPS[op]}"


# --- geometric predicates shared by `evaluate` and the fast enumerator ---------------------


def centre(o: Obj, side: float) -> tuple[float, float]:
    b = o.box
    return (b[0] + b[2]) / (2 * side), (b[1] + b[3]) / (2 * side)


def size_safe(objs: Sequence[Obj], desc: Desc) -> bool:
    """A size word is usable only if every large object that matches the rest of `desc` is
    clearly bigger (box area and visual area) than every such small one."""
    if desc.size is None:
        return True
    rest = Desc(None, desc.color, desc.shape)
    large = [o for o in objs if rest.matches(o) and o.size == "large"]
    small = [o for o in objs if rest.matches(o) and o.size == "small"]
    if not large or not small:
        return True
    return all(_clearly_bigger(a, b) for a in large for b in small)


def _area(o: Obj) -> float:
    b = o.box
    return (b[2] - b[0]) * (b[3] - b[1])


def visual_area(o: Obj) -> float:
    """Box area times the shape's fill fraction: roughly the drawn area, in pixels^2."""
    return _area(o) * FILL[o.shape]


def _clearly_bigger(a: Obj, b: Obj) -> bool:
    return _area(a) >= SIZE_RATIO * _area(b) and visual_area(a) >= SIZE_RATIO * visual_area(b)


def _axis(o: Obj, direction: str, side: float) -> tuple[float, float, float]:
    """(centre, near edge, far edge) along `direction`, larger = further that way."""
    b = o.box
    if direction == "left":
        return -(b[0] + b[2]) / (2 * side), -b[0] / side, -b[2] / side
    if direction == "right":
        return (b[0] + b[2]) / (2 * side), b[2] / side, b[0] / side
    if direction in ("top", "upper"):
        return -(b[1] + b[3]) / (2 * side), -b[1] / side, -b[3] / side
    return (b[1] + b[3]) / (2 * side), b[3] / side, b[1] / side


def beats(a: Obj, b: Obj, direction: str, side: float, gap: float) -> bool:
    """`a` lies clearly further in `direction` than `b`: centres by >= gap, edges in order."""
    ca, na, fa = _axis(a, direction, side)
    cb, nb, fb = _axis(b, direction, side)
    return ca - cb >= gap and na - nb >= EDGE_GAP and fa - fb >= EDGE_GAP


def extreme(objs: Sequence[Obj], members: Sequence[int], direction: str, side: float) -> int | None:
    """The member furthest in `direction` if it clearly beats every other member."""
    best = max(members, key=lambda i: _axis(objs[i], direction, side)[0])
    ok = all(beats(objs[best], objs[j], direction, side, EXTREME_GAP) for j in members if j != best)
    return best if ok else None


def region_class(o: Obj, region: str, side: float) -> int:
    """POS if the centre is clearly inside `region`, NEG if clearly outside, else AMB."""
    u, v = centre(o, side)
    m = REGION_MARGIN
    if region == "middle":
        d = max(abs(u - 0.5), abs(v - 0.5))
        return POS if d <= CENTER_HALF - m else NEG if d >= CENTER_HALF + m else AMB
    classes = []
    for part in region.split():
        x = {"left": 0.5 - u, "right": u - 0.5, "top": 0.5 - v, "bottom": v - 0.5}[part]
        classes.append(POS if x >= m else NEG if x <= -m else AMB)
    if NEG in classes:
        return NEG
    return AMB if AMB in classes else POS


def in_corner(o: Obj, region: str, side: float) -> bool:
    u, v = centre(o, side)
    dx = u if "left" in region.split() else 1.0 - u
    dy = v if "top" in region.split() else 1.0 - v
    return dx <= CORNER_REACH and dy <= CORNER_REACH


_DIRS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}
_CONE_TAN = math.tan(math.radians(REL_CONE_DEG))


def direction_class(o: Obj, landmark: Obj, relation: str, side: float) -> int:
    """Whether `o` is (POS), is not (NEG) or may be (AMB) `relation` of `landmark`.

    POS needs the centre displaced >= REL_MIN along the direction and within the cone; NEG
    needs a displacement <= REL_NEG, i.e. not that way even by the loosest (half-plane)
    reading; anything between is AMB.
    """
    (ou, ov), (lu, lv) = centre(o, side), centre(landmark, side)
    ex, ey = _DIRS[relation]
    du, dv = ou - lu, ov - lv
    along = du * ex + dv * ey
    perp = abs(du * ey - dv * ex)
    if along >= REL_MIN and perp <= _CONE_TAN * along:
        return POS
    return NEG if along <= REL_NEG else AMB


def _box_gap(a: Obj, b: Obj) -> float:
    gx = max(b.box[0] - a.box[2], a.box[0] - b.box[2], 0)
    gy = max(b.box[1] - a.box[3], a.box[1] - b.box[3], 0)
    return math.hypot(gx, gy)


def nearest(
    objs: Sequence[Obj], cands: Sequence[int], landmark: int, side: float, far: bool = False
) -> int | None:
    """The candidate clearly closest to (or, with `far`, farthest from) the landmark."""
    if len(cands) < 2:
        return None
    lu, lv = centre(objs[landmark], side)
    dist = {}
    for i in cands:
        u, v = centre(objs[i], side)
        dist[i] = math.hypot(u - lu, v - lv)
    order = sorted(cands, key=dist.__getitem__, reverse=far)
    a, b = order[0], order[1]
    lo, hi = (dist[b], dist[a]) if far else (dist[a], dist[b])
    if lo > NEAR_RATIO * hi or hi - lo < NEAR_GAP:
        return None
    ga, gb = _box_gap(objs[a], objs[landmark]), _box_gap(objs[b], objs[landmark])
    return a if (ga > gb if far else ga < gb) else None


def compare(objs: Sequence[Obj], pair: Sequence[int], key: str, side: float) -> int | None:
    """Which of exactly two objects is the `key` one (bigger, smaller, left, ...), if clear."""
    if len(pair) != 2:
        return None
    a, b = objs[pair[0]], objs[pair[1]]
    if key in ("bigger", "smaller"):
        if a.size == b.size:  # same size class: too close to call, and clashes with the labels
            return None
        hi, lo = (pair[0], pair[1]) if _area(a) >= _area(b) else (pair[1], pair[0])
        if not _clearly_bigger(objs[hi], objs[lo]):
            return None
        return hi if key == "bigger" else lo
    direction = {"left": "left", "right": "right", "upper": "top", "lower": "bottom"}[key]
    if beats(a, b, direction, side, POS_GAP):
        return pair[0]
    if beats(b, a, direction, side, POS_GAP):
        return pair[1]
    return None


# --- reference evaluator -------------------------------------------------------------------


def evaluate(program: Program, objs: Sequence[Obj], side: float) -> int | None:
    """Index into `objs` of the one object `program` denotes, or None if not exactly one.

    `side` is the image side in pixels (boxes are pixel xyxy).
    """
    if not size_safe(objs, program.target):
        return None
    members = [i for i, o in enumerate(objs) if program.target.matches(o)]
    op, arg = program.op, program.arg
    if op == "unique":
        return members[0] if len(members) == 1 else None
    if op == "extreme":
        return extreme(objs, members, arg, side) if members else None
    if op == "region":
        classes = [region_class(objs[i], arg, side) for i in members]
        if AMB in classes or classes.count(POS) != 1:
            return None
        return members[classes.index(POS)]
    if op == "compare":
        return compare(objs, members, arg, side)
    if op == "relate":
        lm = program.landmark
        if lm is None or not size_safe(objs, lm):
            return None
        anchors = [i for i, o in enumerate(objs) if lm.matches(o)]
        if len(anchors) != 1:
            return None
        cands = [i for i in members if i != anchors[0]]
        if arg in ("closest", "farthest"):
            return nearest(objs, cands, anchors[0], side, far=arg == "farthest")
        classes = [direction_class(objs[i], objs[anchors[0]], arg, side) for i in cands]
        if AMB in classes or classes.count(POS) != 1:
            return None
        return cands[classes.index(POS)]
    raise ValueError(f"unknown op {op!r}")


def evaluate_set(program: Program, objs: Sequence[Obj], side: float) -> list[int] | None:
    """Indices (ascending) of every object `program` denotes, possibly none; None when the
    program is unusable (a size word that does not separate sizes, a landmark that is not
    exactly one object, an object too close to call, or a stated count that is wrong).

    Single-object programs denote their one object (None where `evaluate` gives None).
    """
    if program.op in OPS:
        index = evaluate(program, objs, side)
        return None if index is None else [index]
    if not size_safe(objs, program.target):
        return None
    members = [i for i, o in enumerate(objs) if program.target.matches(o)]
    op, arg = program.op, program.arg
    if op == "all":
        found = members
    elif op == "region_all":
        classes = [region_class(objs[i], arg, side) for i in members]
        if AMB in classes:
            return None
        found = [i for i, c in zip(members, classes) if c == POS]
    elif op == "relate_all":
        lm = program.landmark
        if lm is None or arg not in _DIRS or not size_safe(objs, lm):
            return None
        anchors = [i for i, o in enumerate(objs) if lm.matches(o)]
        if len(anchors) != 1:
            return None
        cands = [i for i in members if i != anchors[0]]
        classes = [direction_class(objs[i], objs[anchors[0]], arg, side) for i in cands]
        if AMB in classes:
            return None
        found = [i for i, c in zip(cands, classes) if c == POS]
    else:
        raise ValueError(f"unknown op {op!r}")
    if program.count is not None and program.count != len(found):
        return None
    return found
