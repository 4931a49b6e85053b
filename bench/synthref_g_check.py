"""An independent check of a SynthRef-G dataset, from its files alone.

    python bench/synthref_g_check.py DATA_ROOT [--name synthref-g] [--split val ...] [--json]

Reads `DATA_ROOT/annotations/<name>/instances.json` and, for every phrase, re-derives which of
the image's listed `objects` its stored program denotes, with its own plain geometry (box
centres, half-planes, fixed slack) and none of the generator's code. A phrase agrees when:

- the derived set equals the record's `target_indices` (several objects, one, or none);
- its boxes in `bbox` (one list per phrase) are exactly those objects' boxes;
- its words fit the program: the colours, shapes and size words it names are those of the
  program's descriptions, a plural noun exactly when it refers to several objects (not
  counting "of the two ..." comparisons), and any number it states ("the three ...",
  "both ...") is the number of objects.

Prints agreement per expression type and the mix of single-target / multi-target / no-target
phrases per split; exits with status 1 if any phrase disagrees.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

COLOURS = {"red", "orange", "yellow", "green", "cyan", "blue", "purple"}
SHAPES = {"circle", "square", "triangle", "star", "diamond", "cross"}
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star",
          "diamonds": "diamond", "crosses": "cross", "shapes": "shape", "objects": "object"}  # fmt: skip
NOUNS = SHAPES | {"shape", "object"}
SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
SLACK = 0.02  # fractions of the image side: how clearly one centre must beat another


def matches(desc: dict | None, obj: dict) -> bool:
    return desc is not None and all(desc.get(k) is None or obj[k] == desc[k] for k in ("size", "color", "shape"))


def centre(obj: dict, side: float) -> tuple[float, float]:
    x, y, w, h = obj["bbox"]
    return (x + w / 2) / side, (y + h / 2) / side


def in_region(u: float, v: float, region: str) -> bool:
    if region == "middle":
        return max(abs(u - 0.5), abs(v - 0.5)) < 0.17
    tests = {"left": u < 0.5, "right": u > 0.5, "top": v < 0.5, "bottom": v > 0.5}
    return all(tests[part] for part in region.split())


def towards(u: float, v: float, lu: float, lv: float, relation: str) -> float:
    """How far (u, v) lies from the landmark (lu, lv) in the named direction."""
    return {"left": lu - u, "right": u - lu, "above": lv - v, "below": v - lv}[relation]


def clear_best(values: dict[int, float]) -> int | None:
    """The key with the largest value if it beats every other by SLACK."""
    ranked = sorted(values, key=values.get, reverse=True)
    if len(ranked) >= 2 and values[ranked[0]] - values[ranked[1]] < SLACK:
        return None
    return ranked[0] if ranked else None


def referents(program: dict, objs: list[dict], side: float) -> list[int] | None:
    """Indices of the objects `program` denotes (ascending), or None where it picks none
    clearly although it should pick exactly one."""
    op, arg = program["op"], program["arg"]
    members = [i for i, o in enumerate(objs) if matches(program["target"], o)]
    at = {i: centre(o, side) for i, o in enumerate(objs)}
    area = {i: o["bbox"][2] * o["bbox"][3] for i, o in enumerate(objs)}
    one = None  # the single-object operators' pick
    if op in ("all", "unique"):
        found = members
    elif op in ("region", "region_all"):
        found = [i for i in members if in_region(*at[i], arg)]
    elif op == "extreme":
        key = {"left": lambda i: -at[i][0], "right": lambda i: at[i][0],
               "top": lambda i: -at[i][1], "bottom": lambda i: at[i][1]}[arg]  # fmt: skip
        one = clear_best({i: key(i) for i in members})
        found = [one] if one is not None else []
    elif op == "compare":
        if len(members) != 2:
            return None
        value = {"bigger": area, "smaller": {i: -area[i] for i in members}, "left": {i: -at[i][0] for i in members},
                 "right": {i: at[i][0] for i in members}, "upper": {i: -at[i][1] for i in members},
                 "lower": {i: at[i][1] for i in members}}[arg]  # fmt: skip
        a, b = members
        found = [a if value[a] > value[b] else b]
    elif op in ("relate", "relate_all"):
        anchors = [i for i, o in enumerate(objs) if matches(program["landmark"], o)]
        if len(anchors) != 1:
            return None
        lm = anchors[0]
        cands = [i for i in members if i != lm]
        if arg in ("closest", "farthest"):
            sign = -1 if arg == "closest" else 1
            one = clear_best({i: sign * math.dist(at[i], at[lm]) for i in cands})
            found = [one] if one is not None else []
        else:
            found = [i for i in cands if towards(*at[i], *at[lm], arg) > SLACK]
    else:
        raise ValueError(f"unknown op {op!r}")
    if op in ("unique", "region", "relate") and len(found) != 1:
        return None
    return sorted(found)


def words_fit(text: str, program: dict, n_targets: int) -> str | None:
    """Why the phrase's words do not fit its program and referents (None if they do)."""
    words = re.findall(r"[a-z]+", text.lower())
    descs = [d for d in (program["target"], program.get("landmark")) if d]
    colours = {w for w in words if w in COLOURS}
    if colours != {d["color"] for d in descs if d["color"]}:
        return f"colours {sorted(colours)} vs program {descs}"
    shapes = {PLURAL.get(w, w) for w in words} & SHAPES
    if shapes != {d["shape"] for d in descs if d["shape"]}:
        return f"shapes {sorted(shapes)} vs program {descs}"
    sizes = {SIZE_WORDS[w] for w in words if w in SIZE_WORDS}
    if sizes != {d["size"] for d in descs if d["size"]}:
        return f"size words {sorted(sizes)} vs program {descs}"
    comparison = "of the two" in text
    first_noun = next((w for w in words if w in NOUNS or w in PLURAL), None)
    plural = first_noun in PLURAL and not comparison
    if plural != (n_targets >= 2):
        return f"{'plural' if plural else 'singular'} phrase for {n_targets} objects"
    stated = [NUMBERS[w] for w in words if w in NUMBERS and not comparison] + [2 for w in words if w == "both"]
    if any(n != n_targets for n in stated) or (stated[0] if stated else None) != program.get("count"):
        return f"states {stated} (program count {program.get('count')}) for {n_targets} objects"
    return None


def kind(n_targets: int) -> str:
    return "no-target" if n_targets == 0 else "single" if n_targets == 1 else "multi"


def check(data: dict, splits: list[str] | None = None) -> dict:
    """Agreement per split and expression type, the phrase mix, and the first disagreements."""
    report: dict = {"splits": {}, "disagreements": [], "phrases": 0, "agree": 0}
    for split, records in data.items():
        if splits and split not in splits:
            continue
        per_type: dict[str, Counter] = defaultdict(Counter)
        mix: Counter = Counter()
        for record in records:
            objs, side, targets = record["objects"], record["width"], record["target_indices"]
            boxes = record["bbox"]
            for k, (text, etype, program) in enumerate(
                zip(record["expressions"], record["expression_types"], record["programs"])
            ):
                problem = None
                derived = referents(program, objs, side)
                if derived != sorted(targets):
                    problem = f"program denotes {derived}, record says {targets}"
                elif sorted(map(tuple, boxes[k])) != sorted(tuple(objs[i]["bbox"]) for i in targets):
                    problem = f"boxes {boxes[k]} are not the boxes of objects {targets}"
                else:
                    problem = words_fit(text, program, len(targets))
                per_type[etype]["phrases"] += 1
                per_type[etype]["agree"] += problem is None
                mix[kind(len(targets))] += 1
                report["phrases"] += 1
                report["agree"] += problem is None
                if problem and len(report["disagreements"]) < 20:
                    report["disagreements"].append({"split": split, "ref_id": record["ref_id"], "phrase": text,
                                                    "type": etype, "problem": problem})  # fmt: skip
        total = sum(mix.values())
        report["splits"][split] = {
            "phrases": total,
            "mix": {k: round(mix[k] / total, 4) for k in ("single", "multi", "no-target")} if total else {},
            "types": {t: dict(c) for t, c in sorted(per_type.items())},
        }
    return report


def format_report(report: dict) -> str:
    lines = []
    for split, s in report["splits"].items():
        mix = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["mix"].items())
        lines.append(f"{split}: {s['phrases']} phrases ({mix})")
        for t, c in s["types"].items():
            lines.append(f"    {t:<20} {c['agree']:>6}/{c['phrases']:<6} agree")
    share = 100 * report["agree"] / max(report["phrases"], 1)
    lines.append(f"agreement: {report['agree']}/{report['phrases']} phrases ({share:.2f}%)")
    for d in report["disagreements"]:
        lines.append(f"  disagrees: {d['split']} ref_id {d['ref_id']} [{d['type']}] {d['phrase']!r}: {d['problem']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root")
    parser.add_argument("--name", default="synthref-g")
    parser.add_argument("--split", action="append", help="check only this split (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    path = Path(args.data_root) / "annotations" / args.name / "instances.json"
    report = check(json.loads(path.read_text(encoding="utf-8")), args.split)
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["agree"] == report["phrases"] else 1


if __name__ == "__main__":
    sys.exit(main())
