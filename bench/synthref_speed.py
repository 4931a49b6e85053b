"""SynthRef generation speed and content statistics.

    python bench/synthref_speed.py --images 1000 --image-size 256

Generates `--images` train images into a temporary directory on one core (workers=1), then
prints a markdown table: images/s end to end (scenes, expressions, PNG files, JSON), the
expression-type histogram, objects and records per image, and the Acc@0.5 of language-blind
baselines (which must stay low for the benchmark to measure grounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from simvg.data.synthref import generate_synthref


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two COCO xywh boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def baselines(records: list[dict]) -> dict[str, float]:
    """Acc@0.5 over expressions of boxes chosen without reading the expression."""
    hits: Counter = Counter()
    n = 0
    for r in records:
        objs, side = r["objects"], r["width"]
        boxes = [o["bbox"] for o in objs]
        largest = max(boxes, key=lambda b: b[2] * b[3])
        smallest = min(boxes, key=lambda b: b[2] * b[3])
        central = min(
            boxes,
            key=lambda b: (b[0] + b[2] / 2 - side / 2) ** 2 + (b[1] + b[3] / 2 - side / 2) ** 2,
        )
        centre_box = [side * 0.4, side * 0.4, side * 0.2, side * 0.2]
        k = len(r["expressions"])
        n += k
        for name, box in (
            ("largest object", largest),
            ("smallest object", smallest),
            ("most central object", central),
            ("fixed centre box", centre_box),
        ):
            hits[name] += k * (iou(box, r["bbox"]) >= 0.5)
        hits["random object (expected)"] += (
            k * sum(iou(b, r["bbox"]) >= 0.5 for b in boxes) / len(boxes)
        )
    return {name: hits[name] / max(n, 1) for name in hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="number of images to generate")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = generate_synthref(
            tmp,
            counts={"train": args.images},
            seed=args.seed,
            image_size=args.image_size,
            workers=1,
        )
        seconds = time.perf_counter() - t0
        records = json.loads(Path(path).read_text())["train"]
        png_bytes = sum(f.stat().st_size for f in Path(tmp, "images").rglob("*.png"))

    per_image: dict[int, dict] = {}
    for r in records:
        per_image.setdefault(r["image_id"], r)
    n_objects = [len(r["objects"]) for r in per_image.values()]
    types = Counter(t for r in records for t in r["expression_types"])
    ops = Counter(
        p["op"] + (f":{p['arg']}" if p["arg"] else "") for r in records for p in r["programs"]
    )
    n_expr = sum(types.values())
    refs_per_image = Counter(Counter(r["image_id"] for r in records).values())
    one_word = sum(
        any(
            sum(o[a] == r["objects"][r["target_index"]][a] for o in r["objects"]) == 1
            for a in ("shape", "color", "size")
        )
        for r in records
    )

    print(f"## SynthRef generation ({args.images} images, {args.image_size} px, 1 worker)\n")
    print("| metric | value |\n|---|---|")
    print(f"| images/s (end to end) | {args.images / seconds:.1f} |")
    print(f"| seconds | {seconds:.2f} |")
    print(f"| mean PNG size (KiB) | {png_bytes / max(len(per_image), 1) / 1024:.1f} |")
    print(f"| records (referred objects) | {len(records)} |")
    print(f"| records per image: 1 / 2 | {refs_per_image[1]} / {refs_per_image[2]} |")
    print(f"| expressions | {n_expr} ({n_expr / max(len(records), 1):.2f} per record) |")
    print(
        f"| objects per image: min / mean / max | {min(n_objects)} / "
        f"{statistics.mean(n_objects):.2f} / {max(n_objects)} |"
    )
    print(f"| targets singled out by one attribute word | {one_word / max(len(records), 1):.1%} |")
    hist = Counter(n_objects)
    print(
        "| objects per image histogram | "
        + ", ".join(f"{k}: {hist[k]}" for k in sorted(hist))
        + " |"
    )

    print("\n| expression type | count | share |\n|---|---|---|")
    for t in ("attribute", "location", "relation", "comparison"):
        print(f"| {t} | {types[t]} | {types[t] / max(n_expr, 1):.1%} |")

    print("\n| program (op:arg) | count |\n|---|---|")
    for op, c in sorted(ops.items()):
        print(f"| {op} | {c} |")

    print("\n| language-blind baseline | Acc@0.5 |\n|---|---|")
    for name, acc in sorted(baselines(records).items()):
        print(f"| {name} | {acc:.1%} |")


if __name__ == "__main__":
    main()
