"""Regenerate the demo's example images (SynthRef, 256 px) and their phrase files.

    python examples/make_examples.py [--out examples]

Equivalent to ``simvg synth --out TMP --name synthref --train 0 --val 8 --testA 0 --testB 0
--seed 123 --image-size 256`` followed by copying four of the val images here. Each
``<name>.png`` gets a ``<name>.txt`` with 1-3 phrases (one per line), all taken from the
generator's own expressions for that image, so each phrase is true for it. The generator is
deterministic, so the output is byte-identical on every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from simvg.data.synthref import generate_synthref

SEED = 123
IMAGE_SIZE = 256
COUNTS = {"train": 0, "val": 8, "testA": 0, "testB": 0}
# Generated val images used as examples (small files, varied expression types).
CHOSEN = ["val/0000001.png", "val/0000003.png", "val/0000004.png", "val/0000007.png"]
MAX_PHRASES = 3


def phrases_for(records: list[dict], file_name: str) -> list[str]:
    """Up to MAX_PHRASES expressions of the image: first each referred object's first
    expression (so several objects get a box), then the remaining ones in order."""
    refs = [r for r in records if r["file_name"] == file_name]
    ordered = [r["expressions"][0] for r in refs] + [e for r in refs for e in r["expressions"][1:]]
    unique = list(dict.fromkeys(ordered))
    return unique[:MAX_PHRASES]


def make_examples(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        annotations = generate_synthref(tmp, "synthref", COUNTS, seed=SEED, image_size=IMAGE_SIZE)
        records = json.loads(annotations.read_text())["val"]
        for file_name in CHOSEN:
            stem = "synthref_" + Path(file_name).stem
            image = out / f"{stem}.png"
            shutil.copyfile(Path(tmp) / "images" / "synthref" / file_name, image)
            (out / f"{stem}.txt").write_text("\n".join(phrases_for(records, file_name)) + "\n")
            written.append(image)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()
    for image in make_examples(args.out):
        print(f"{image}  <- {image.with_suffix('.txt').read_text().strip().replace(chr(10), ' | ')}")


if __name__ == "__main__":
    main()
