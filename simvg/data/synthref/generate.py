"""Generating a SynthRef dataset in the SimVG/SeqTR layout.

    OUT/annotations/<name>/instances.json   {split: [record, ...]}, one record per referred object
    OUT/images/<name>/<split>/<image_id>.png

Every image is generated from its own RNG, seeded from (seed, split, index) by a fixed
formula, so the output is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from PIL import Image

from .expressions import ProgramTable, find_programs
from .programs import Program, in_corner
from .scene import SceneObject, render, sample_objects
from .text import realise
from .vocabulary import SPLIT_TYPES, SPLITS

DEFAULT_COUNTS: Mapping[str, int] = MappingProxyType(
    {"train": 10000, "val": 1000, "testA": 1000, "testB": 1000}
)
MIN_IMAGE_SIZE = 64
PNG_COMPRESS_LEVEL = 1  # fast to write; PNG is lossless at any level
PNG_STRATEGY = zlib.Z_RLE  # on these flat images: ~10% faster and smaller than the default
SECOND_REF_PROB = 0.5  # probability that an image has a second referred object
N_EXPRESSIONS_WEIGHTS = (0.3, 0.4, 0.3)  # 1, 2 or 3 expressions per record
# Extra expressions of a record are drawn among the types its target supports, weighted to
# offset how much more often attribute/location phrases exist than comparisons.
EXTRA_TYPE_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"attribute": 2.5, "location": 0.4, "relation": 1.0, "comparison": 1.0}
)
_SCENE_TRIES = 25
_CHUNK = 64


def image_seed(seed: int, split: str, index: int) -> int:
    """Seed of image `index` of `split`: the first 8 bytes (little-endian) of
    BLAKE2b("synthref:<seed>:<split>:<index>")."""
    digest = hashlib.blake2b(f"synthref:{seed}:{split}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _choose_types(rng: random.Random, available: list[str], k: int) -> list[str]:
    """Up to `k` distinct types from `available`, drawn without replacement by weight."""
    pool, out = list(available), []
    while pool and len(out) < k:
        t = rng.choices(pool, [EXTRA_TYPE_WEIGHTS[p] for p in pool])[0]
        pool.remove(t)
        out.append(t)
    return out


def _record(
    table: ProgramTable, target: int, first_type: str, allowed: tuple[str, ...], rng: random.Random
) -> dict:
    """Expressions for one referred object: the first of `first_type`, then up to two more,
    of other types where the scene allows, else other phrases of the types already used."""
    k = rng.choices((1, 2, 3), N_EXPRESSIONS_WEIGHTS)[0]
    others = [t for t in allowed if t != first_type and t in table.types_for(target)]
    types = [first_type] + _choose_types(rng, others, k - 1)
    avoid: set = set()
    programs: list[Program] = []
    for t in types:
        p = table.choose(t, target, rng, avoid)
        if p is not None:
            programs.append(p)
    while len(programs) < k:  # not enough distinct types: repeat a type with another program
        p = table.choose(rng.choice(types), target, rng, avoid)
        if p is None:
            break
        programs.append(p)
    obj: SceneObject = table.objs[target]
    side = table.side
    texts = [
        realise(p, rng, corner=p.op == "region" and in_corner(obj, p.arg, side)) for p in programs
    ]
    return {
        "bbox": obj.xywh(),
        "expressions": texts,
        "expression_types": [p.type for p in programs],
        "programs": [p.as_dict() for p in programs],
        "category": f"{obj.size} {obj.color} {obj.shape}",
        "target_index": target,
    }


def make_example(
    seed: int, split: str, index: int, image_size: int
) -> tuple[Image.Image, list[dict], list[dict]]:
    """Generate image `index` of `split`.

    Returns the RGB image (`image_size` pixels square), the per-target record parts (bbox in
    COCO xywh pixels, expressions, ...) and the list of all objects as dicts.
    """
    rng = random.Random(image_seed(seed, split, index))
    allowed = SPLIT_TYPES[split]
    first_type = rng.choice(allowed)
    for attempt in range(1000):
        objs = sample_objects(rng, image_size)
        table = find_programs(objs, image_size, allowed)
        if table.targets(first_type):
            break
        if attempt >= _SCENE_TRIES:  # rare: settle for another type this scene supports
            found = [t for t in allowed if table.targets(t)]
            if found:
                first_type = rng.choice(found)
                break
    else:
        raise RuntimeError(f"no referable object found for {split}[{index}]")

    # The referred object is uniform among the objects that the wanted type can refer to.
    target = rng.choice(table.targets(first_type))
    records = [_record(table, target, first_type, allowed, rng)]
    if rng.random() < SECOND_REF_PROB:
        second_types = list(allowed)
        rng.shuffle(second_types)
        for t in second_types:
            cands = [i for i in table.targets(t) if i != target]
            if cands:
                records.append(_record(table, rng.choice(cands), t, allowed, rng))
                break
    image = render(rng, objs, image_size)
    return image, records, [o.as_dict() for o in objs]


def _work(job: tuple) -> list[dict]:
    """Generate, write and describe the images [start, stop) of one split."""
    seed, split, start, stop, image_size, image_dir, id_offset, generalized = job
    if generalized:
        from .generalized import make_generalized_example

        return _work_generalized(job, make_generalized_example)
    out = []
    for index in range(start, stop):
        image, parts, objects = make_example(seed, split, index, image_size)
        image_id = id_offset + index
        file_name = f"{split}/{image_id:07d}.png"
        image.save(
            Path(image_dir) / file_name,
            format="PNG",
            compress_level=PNG_COMPRESS_LEVEL,
            compress_type=PNG_STRATEGY,
        )
        for part in parts:
            out.append(
                {
                    "ref_id": 0,  # assigned in order by the parent
                    "image_id": image_id,
                    "file_name": file_name,
                    "bbox": part["bbox"],
                    "height": image_size,
                    "width": image_size,
                    "expressions": part["expressions"],
                    "expression_types": part["expression_types"],
                    "programs": part["programs"],
                    "category": part["category"],
                    "objects": objects,
                    "target_index": part["target_index"],
                }
            )
    return out


def _work_generalized(job: tuple, make) -> list[dict]:
    """`_work` for SynthRef-G: boxes per expression (SimVG's GREC layout), `target_indices`."""
    seed, split, start, stop, image_size, image_dir, id_offset, _ = job
    out = []
    for index in range(start, stop):
        image, parts, objects = make(seed, split, index, image_size)
        image_id = id_offset + index
        file_name = f"{split}/{image_id:07d}.png"
        image.save(
            Path(image_dir) / file_name,
            format="PNG",
            compress_level=PNG_COMPRESS_LEVEL,
            compress_type=PNG_STRATEGY,
        )
        for part in parts:
            boxes = [objects[i]["bbox"] for i in part["target_indices"]]
            out.append(
                {
                    "ref_id": 0,  # assigned in order by the parent
                    "image_id": image_id,
                    "file_name": file_name,
                    "bbox": [boxes for _ in part["expressions"]],
                    "height": image_size,
                    "width": image_size,
                    "expressions": part["expressions"],
                    "expression_types": part["expression_types"],
                    "programs": part["programs"],
                    "category": part["category"],
                    "objects": objects,
                    "target_indices": part["target_indices"],
                }
            )
    return out


def _check_args(
    name: str, counts: Mapping[str, int], seed: int, image_size: int, workers: int
) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name must be a non-empty directory name, got {name!r}")
    if not isinstance(counts, Mapping):
        raise ValueError(f"counts must be a mapping split -> number of images, got {counts!r}")
    for split, n in counts.items():
        if split not in SPLITS:
            raise ValueError(f"counts: unknown split {split!r}; expected one of {list(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"counts[{split!r}] must be a non-negative integer, got {n!r}")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < MIN_IMAGE_SIZE
    ):
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")


def _dump(data: dict[str, list[dict]]) -> str:
    """JSON with one record per line; key order as built, so the bytes are reproducible."""
    parts = []
    for split, records in data.items():
        body = ",\n".join(json.dumps(r, separators=(",", ":")) for r in records)
        parts.append(f"{json.dumps(split)}:[\n{body}\n]" if records else f"{json.dumps(split)}:[]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def generate_synthref(
    out: str | Path,
    name: str = "synthref",
    counts: Mapping[str, int] = DEFAULT_COUNTS,
    seed: int = 0,
    image_size: int = 256,
    workers: int = 1,
    progress: bool = False,
    generalized: bool = False,
) -> Path:
    """Write a SynthRef dataset under the data root `out` and return its instances.json path.

    Args:
        out: data root; writes `annotations/<name>/instances.json` and `images/<name>/<split>/`.
        name: dataset name (a directory name).
        counts: number of *images* per split, keys among train/val/testA/testB.
        seed: any integer; equal arguments give byte-identical files.
        image_size: image side in pixels (square images), at least 64.
        workers: processes used to generate (the output does not depend on it).
        progress: print progress to stderr.
        generalized: write SynthRef-G (see `generalized`): phrases that denote one object,
            several, or none.

    Each record has `bbox` as COCO [x, y, w, h] in pixels, 1-3 `expressions` with their
    `expression_types` and `programs`, and `objects` (every object's bbox/shape/color/size)
    with `target_index` pointing at the referred one. SynthRef-G records have instead, per
    expression, the list of its boxes in `bbox` (SimVG's GREC layout; empty for no target)
    and `target_indices` listing the referred objects (possibly none).
    """
    _check_args(name, counts, seed, image_size, workers)
    root = Path(out)
    ann_dir = root / "annotations" / name
    image_dir = root / "images" / name
    splits = [s for s in SPLITS if s in counts]
    jobs, offset = [], 1
    for split in splits:
        (image_dir / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, counts[split], _CHUNK):
            stop = min(start + _CHUNK, counts[split])
            jobs.append((seed, split, start, stop, image_size, str(image_dir), offset, generalized))
        offset += counts[split]
    ann_dir.mkdir(parents=True, exist_ok=True)

    data: dict[str, list[dict]] = {s: [] for s in splits}
    total, done, t0 = sum(counts[s] for s in splits), 0, time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        # fork is cheap (no re-import of the caller's modules); elsewhere use the default.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else None)
        with ctx.Pool(min(workers, len(jobs))) as pool:
            results = pool.imap(_work, jobs)
            for job, recs in zip(jobs, results):
                data[job[1]].extend(recs)
                done += job[3] - job[2]
                _report(progress, done, total, t0)
    else:
        for job in jobs:
            data[job[1]].extend(_work(job))
            done += job[3] - job[2]
            _report(progress, done, total, t0)

    # A previous run into the same folder may have written more images: drop those this
    # dataset no longer lists (only SynthRef's own <split>/<7 digits>.png files).
    written = {rec["file_name"] for split in splits for rec in data[split]}
    for split in splits:
        for stale in (image_dir / split).glob("[0-9]" * 7 + ".png"):
            if f"{split}/{stale.name}" not in written:
                stale.unlink()
    ref_id = 1
    for split in splits:
        for rec in data[split]:
            rec["ref_id"] = ref_id
            ref_id += 1
    path = ann_dir / "instances.json"
    path.write_text(_dump(data), encoding="utf-8")
    return path


def _report(progress: bool, done: int, total: int, t0: float) -> None:
    if progress:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print(f"synthref: {done}/{total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)
