"""What a model says about real photographs: the share of phrases it answers "no match".

A SynthRef model knows coloured shapes on plain backgrounds; on a real photograph none of its
boxes means anything, and the honest answer to a phrase is "no match". This runs each model on
the real photographs that scikit-image ships in its wheel (an astronaut, a cat, a cup of
coffee, coins, a motorcycle, a rocket, a camera man; nothing is downloaded) with two kinds of
phrase: SynthRef's own ("the red circle", which names nothing there) and everyday ones ("the
cat", which a model of real images would find). Every answer counts: `predict_all` at the
threshold (0.7, the GREC protocol's), "no match" when no box reaches it, and the best box's
score.

    pip install scikit-image
    python bench/real_photos.py simvg/weights/synthref-student [MORE_CHECKPOINTS...] [--threshold 0.7]

Writes bench/results/real_photos.md (--out).
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import statistics
from pathlib import Path

from PIL import Image

from simvg.benchmark import save_table
from simvg.inference import Grounder

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "coins.png", "motorcycle_left.png", "rocket.jpg", "camera.png")
SYNTHREF_PHRASES = (
    "the red circle",
    "the big blue square",
    "the leftmost star",
    "all the green triangles",
    "the diamond closest to the yellow circle",
    "the small purple star",
)
EVERYDAY_PHRASES = ("the cat", "the cup of coffee", "the person", "the coin on the left", "the rocket", "the wheel")


def real_photos() -> dict[str, Image.Image]:
    """scikit-image's bundled photographs by name, as RGB PIL images."""
    if importlib.util.find_spec("skimage") is None:
        raise SystemExit("bench/real_photos.py needs scikit-image's photographs: pip install scikit-image")
    folder = importlib.resources.files("skimage") / "data"
    return {Path(name).stem: Image.open(folder / name).convert("RGB") for name in PHOTOS}


def answers(grounder: Grounder, photos: dict[str, Image.Image], phrases: tuple[str, ...], threshold: float) -> dict:
    """Over every (photo, phrase): how many, the share (%) answered "no match" at ``threshold``,
    and the median and maximum of the best box's score."""
    kept, best = [], []
    for image in photos.values():
        kept += [len(r) for r in grounder.predict_all(image, list(phrases), threshold=threshold)]
        best += [r.score for r in grounder.predict(image, list(phrases))]
    return {
        "count": len(kept),
        "no_match": 100.0 * sum(k == 0 for k in kept) / len(kept),
        "median_score": statistics.median(best),
        "max_score": max(best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=RESULTS / "real_photos.md")
    args = parser.parse_args()

    photos = real_photos()
    lines = [
        f"Real photographs (scikit-image's {len(photos)}: {', '.join(photos)}), `predict_all` at score >= "
        f"{args.threshold}; \"no match\" = no box kept. Best score = the best box's score (`predict`).",
        "",
        "| model | answers per phrase | phrases | SynthRef phrases: no match | best score, median / max "
        "| everyday phrases: no match | best score, median / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for checkpoint in args.checkpoints:
        grounder = Grounder.from_pretrained(checkpoint)
        several = grounder.config.model.head.num_queries > 1
        synthref = answers(grounder, photos, SYNTHREF_PHRASES, args.threshold)
        everyday = answers(grounder, photos, EVERYDAY_PHRASES, args.threshold)
        lines.append(
            f"| {checkpoint} | {'several' if several else 'one'} | {synthref['count'] + everyday['count']} "
            f"| {synthref['no_match']:.1f}% | {synthref['median_score']:.2f} / {synthref['max_score']:.2f} "
            f"| {everyday['no_match']:.1f}% | {everyday['median_score']:.2f} / {everyday['max_score']:.2f} |"
        )
    lines += ["", "SynthRef phrases: " + "; ".join(SYNTHREF_PHRASES) + ".",
              "Everyday phrases: " + "; ".join(EVERYDAY_PHRASES) + "."]  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
