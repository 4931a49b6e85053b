"""SynthRef: procedural referring-expression images in the SimVG annotation layout.

`generate_synthref(out, name, counts, seed, image_size, workers)` writes

    out/annotations/<name>/instances.json    {"train": [...], "val": [...], "testA": [...], ...}
    out/images/<name>/<split>/<image_id>.png

with one record per referred object (1-2 per image):

    ref_id, image_id      ints, unique across the dataset
    file_name             relative to out/images/<name>/, e.g. "train/0000001.png"
    bbox                  COCO [x, y, w, h] floats, pixels: tight box of the drawn shape
    height, width         image size in pixels
    expressions           1-3 phrases, each denoting exactly the target
    expression_types      parallel: "attribute" | "location" | "relation" | "comparison"
    programs              parallel: {"op", "target": {size, color, shape}, "arg", "landmark"}
    category              e.g. "large red circle"
    objects               every object: {"bbox": [x, y, w, h], "shape", "color", "size"}
    target_index          index of the referred object in `objects`

testA holds attribute/location phrases only, testB relation/comparison only; train and val
hold all four types in about equal shares.

With `generalized=True` it writes SynthRef-G (`generalized.py`, docs/synthref-g.md): records
whose phrases denote one object, several or none, with per-phrase box lists in `bbox` (SimVG's
GREC layout) and `target_indices` instead of `target_index`.
"""

from .generalized import make_generalized_example
from .generate import DEFAULT_COUNTS, generate_synthref, make_example
from .programs import Desc, Program, evaluate, evaluate_set
from .vocabulary import FLIP_WORDS

__all__ = [
    "DEFAULT_COUNTS",
    "FLIP_WORDS",
    "Desc",
    "Program",
    "evaluate",
    "evaluate_set",
    "generate_synthref",
    "make_example",
    "make_generalized_example",
]
