"""Language-blind baselines on SynthRef: the best one can do without reading the phrase.

    python bench/synthref_baseline.py --data-root DATA_ROOT [--split val]

Baselines (Acc@0.5 against the target box, every expression counted once):
- prior box: the median training target box (normalised), scaled to each image;
- largest / smallest / most central object: uses the scene's object boxes (an oracle
  detector), still ignoring the phrase;
- random object (expected accuracy): 1 / number of objects, averaged.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from simvg.data import load_records
from simvg.metrics import paired_box_iou


def xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def accuracy(pred: list[list[float]], gt: list[list[float]]) -> float:
    ious = paired_box_iou(torch.tensor(pred, dtype=torch.float64), torch.tensor(gt, dtype=torch.float64))
    return 100.0 * float((ious >= 0.5).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--dataset", default="synthref")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()

    train = load_records(args.data_root, args.dataset, "train", check_images=False)
    rel = [[(r.single_box()[i] / (r.width if i % 2 == 0 else r.height)) for i in range(4)] for r in train]
    prior = [statistics.median(v[i] for v in rel) for i in range(4)]

    records = load_records(args.data_root, args.dataset, args.split, check_images=False)
    gt, prior_boxes, largest, smallest, central = [], [], [], [], []
    random_hits = []
    for r in records:
        objects = [xyxy(o["bbox"]) for o in r.extra["objects"]]
        area = [(b[2] - b[0]) * (b[3] - b[1]) for b in objects]
        centre = [((b[0] + b[2]) / 2 - r.width / 2) ** 2 + ((b[1] + b[3]) / 2 - r.height / 2) ** 2 for b in objects]
        for _ in r.expressions:  # every expression counts once
            gt.append(list(r.single_box()))
            prior_boxes.append([prior[0] * r.width, prior[1] * r.height, prior[2] * r.width, prior[3] * r.height])
            largest.append(objects[max(range(len(objects)), key=area.__getitem__)])
            smallest.append(objects[min(range(len(objects)), key=area.__getitem__)])
            central.append(objects[min(range(len(objects)), key=centre.__getitem__)])
            random_hits.append(100.0 / len(objects))
    rows = [
        ("prior box (median train target)", accuracy(prior_boxes, gt)),
        ("largest object", accuracy(largest, gt)),
        ("smallest object", accuracy(smallest, gt)),
        ("most central object", accuracy(central, gt)),
        ("random object (expected)", statistics.mean(random_hits)),
    ]
    print(f"Language-blind baselines on {args.dataset} {args.split} ({len(gt)} expressions), Acc@0.5:\n")
    print("| baseline | Acc@0.5 |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
