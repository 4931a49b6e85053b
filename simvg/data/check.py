"""Checking a data root before training on it: ``simvg check-data``.

Every split of every dataset is read (the annotations parse, the split is non-empty), every
image file is opened and decoded, and every box is checked against the image it lies in (its
real size, after EXIF orientation). Problems are collected, each naming its file and record,
rather than stopping at the first; an annotation file that does not parse stops only the check
of its split (the reader names the first bad record).

Training runs the image pass too, in its cheaper form (:func:`check_record_images` with
``decode=False``): the header of every image, and for PNG files the checksums of every chunk,
so a missing, empty, garbage or truncated file stops the run in seconds, naming it, rather than
when a batch first reaches it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from simvg.data.images import MAX_PIXELS, ImageReadError
from simvg.data.readers import available_datasets, load_records
from simvg.data.records import DataFormatError, GroundingRecord
from simvg.data.refer_layout import REFER_DATASETS, load_refs, refs_file
from simvg.data.simvg_layout import annotation_file, read_split_names

# A box may reach this many pixels past the image's edge (rounding in converted annotations).
BOX_SLACK = 1.0
# JPEG files end with this marker; one without it is decoded to tell truncation from padding.
JPEG_END = b"\xff\xd9"


@dataclass
class Problem:
    """Something that stops a data root from being used as it is: ``where`` names the file (and
    the record), ``what`` says what is wrong."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


@dataclass
class SplitSummary:
    dataset: str
    split: str
    records: int = 0
    expressions: int = 0
    images: int = 0
    readable: bool = True


@dataclass
class DataReport:
    """What :func:`check_data_root` found: one summary per split read, and every problem."""

    data_root: Path
    splits: list[SplitSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ImageInfo:
    """An image file's size as a user sees it (after EXIF orientation), or its problem."""

    width: int = 0
    height: int = 0
    problem: str | None = None


def inspect_image(path: Path, decode: bool = True) -> ImageInfo:
    """Open the image file at ``path``; ``decode`` reads every pixel (JPEGs at 1/8 scale, which
    still reads all of the file's data), otherwise only the header, plus the checksums of every
    chunk of a PNG and, for a JPEG without its end marker, a decode.

    Returns its (width, height) after EXIF orientation (a PNG read without ``decode``: as
    stored), or what is wrong with it."""
    try:
        if not path.is_file():
            return ImageInfo(problem="image not found" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            return ImageInfo(problem="image file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if not decode:
                with Image.open(path) as image:
                    if image.format == "PNG":
                        image.verify()  # every chunk's checksum, without decompressing
            with Image.open(path) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    return ImageInfo(problem="image has zero size")
                if width * height > MAX_PIXELS:
                    return ImageInfo(problem=f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})")
                if decode or (image.format == "JPEG" and not _ends_with(path, JPEG_END)):
                    if image.format == "JPEG":
                        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                    image.load()
                # (a PNG's EXIF may follow its pixels: read undecoded, its orientation is unknown)
                orientation = image.getexif().get(0x0112, 1) if decode or image.format != "PNG" else 1
    except Image.DecompressionBombError as err:
        return ImageInfo(problem=f"image too large ({err})")
    except UnidentifiedImageError:
        return ImageInfo(problem="not a supported image file")
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError) as err:
        return ImageInfo(problem=f"the file is corrupt or truncated ({err})")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(width, height)


def _ends_with(path: Path, marker: bytes) -> bool:
    with path.open("rb") as f:
        f.seek(-len(marker), os.SEEK_END)
        return f.read() == marker


def inspect_images(paths: Iterable[Path], decode: bool = True, workers: int | None = None) -> dict[Path, ImageInfo]:
    """:func:`inspect_image` of every path (each once), in ``workers`` threads (default: the
    CPUs this process may use, at most 8; Pillow decodes outside the GIL)."""
    unique = sorted(set(paths))
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1 or len(unique) < 64:
        return {path: inspect_image(path, decode) for path in unique}
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(unique, pool.map(lambda p: inspect_image(p, decode), unique, chunksize=32)))


def record_boxes(record: GroundingRecord) -> list[tuple[float, float, float, float]]:
    """The record's target boxes, xyxy pixels (none, one or several)."""
    boxes = getattr(record, "boxes_xyxy", None)
    if boxes is not None:
        return list(boxes)
    return [] if record.box_xyxy is None else [record.box_xyxy]


def record_problems(record: GroundingRecord, index: int, image: ImageInfo, source: str) -> list[Problem]:
    """What is wrong with record ``index`` of its split (read from the annotation file
    ``source``) given its readable image: a size other than the record's, a box reaching past
    the image."""
    where = f"{source}: split '{record.split}', record {index} (ref_id {record.ref_id}, image {record.image_path})"
    if (image.width, image.height) != (record.width, record.height):
        return [Problem(where, f"the image is {image.width}x{image.height} pixels but the record says "
                               f"{record.width}x{record.height}: its boxes would be in the wrong frame")]  # fmt: skip
    found = []
    for box in record_boxes(record):
        x0, y0, x1, y1 = box
        if x0 < -BOX_SLACK or y0 < -BOX_SLACK or x1 > image.width + BOX_SLACK or y1 > image.height + BOX_SLACK:
            shown = ", ".join(f"{v:g}" for v in box)
            found.append(Problem(where, f"box ({shown}) (x0, y0, x1, y1) reaches past the "
                                        f"{image.width}x{image.height} image"))  # fmt: skip
    return found


def dataset_splits(data_root: Path, dataset: str) -> list[str]:
    """The split names of ``dataset`` under ``data_root``, as its annotation file lists them."""
    path = annotation_file(data_root, dataset)
    if path.is_file():
        return read_split_names(path)
    if dataset in REFER_DATASETS and refs_file(data_root, dataset).is_file():
        refs = load_refs(refs_file(data_root, dataset))
        return sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
    raise DataFormatError(f"unknown dataset '{dataset}' under {data_root}; available: "
                          f"{', '.join(available_datasets(data_root)) or 'none'}")  # fmt: skip


def check_data_root(
    data_root: str | Path,
    datasets: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    decode: bool = True,
    workers: int | None = None,
) -> DataReport:
    """Check every split of every dataset (or those named) under ``data_root``.

    decode: read every pixel of every image (otherwise headers only; see :func:`inspect_image`).
    Returns a :class:`DataReport`; it raises only when ``data_root`` itself is missing."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"data root not found: {data_root}")
    report = DataReport(data_root)
    names = list(datasets) if datasets else available_datasets(data_root)
    if not names:
        report.problems.append(Problem(str(data_root), "no dataset found (expected annotations/<name>/instances.json "
                                                       "or a refer-toolkit folder such as refcoco/refs(unc).p)"))  # fmt: skip
        return report
    loaded: list[tuple[SplitSummary, list[GroundingRecord], str]] = []
    for dataset in names:
        try:
            available = dataset_splits(data_root, dataset)
        except (DataFormatError, FileNotFoundError) as err:
            report.problems.append(Problem(dataset, str(err)))
            continue
        wanted = [s for s in available if not splits or s in splits]
        for split in splits or []:
            if split not in available:
                report.problems.append(Problem(f"dataset '{dataset}'", f"no split '{split}' (available: "
                                                                      f"{', '.join(available)})"))  # fmt: skip
        source = str(annotation_file(data_root, dataset) if annotation_file(data_root, dataset).is_file()
                     else refs_file(data_root, dataset))  # fmt: skip
        for split in wanted:
            summary = SplitSummary(dataset, split)
            report.splits.append(summary)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # repeated ref_ids: a warning, not a problem
                    records = load_records(data_root, dataset, split, image_root, check_images=False)
            except (DataFormatError, FileNotFoundError, ValueError) as err:
                summary.readable = False
                report.problems.append(Problem("", str(err)))  # the reader's message names file and split
                continue
            summary.records = len(records)
            summary.expressions = sum(len(r.expressions) for r in records)
            summary.images = len({r.image_path for r in records})
            loaded.append((summary, records, source))
    images = inspect_images((r.image_path for _, records, _ in loaded for r in records), decode, workers)
    report.images = len(images)
    users: dict[Path, list[tuple[GroundingRecord, int, str]]] = {}
    for _, records, source in loaded:
        for index, record in enumerate(records):
            users.setdefault(record.image_path, []).append((record, index, source))
    for path, info in images.items():  # an unreadable image once, with the records that use it
        if info.problem is not None:
            record, index, source = users[path][0]
            others = f" and {len(users[path]) - 1} more record(s)" if len(users[path]) > 1 else ""
            report.problems.append(Problem(str(path), f"{info.problem} (used by {source}: split '{record.split}', "
                                                      f"record {index} (ref_id {record.ref_id}){others})"))  # fmt: skip
    for _, records, source in loaded:
        for index, record in enumerate(records):
            if images[record.image_path].problem is None:
                report.problems += record_problems(record, index, images[record.image_path], source)
    return report


def check_record_images(records: Sequence[GroundingRecord], what: str, decode: bool = False,
                        workers: int | None = None) -> None:  # fmt: skip
    """Raise :class:`ImageReadError` naming every image of ``records`` that cannot be read
    (``what``: which records, e.g. "the training split"); the cheap pass by default."""
    images = inspect_images((r.image_path for r in records), decode, workers)
    bad = {path: info.problem for path, info in images.items() if info.problem is not None}
    if bad:
        shown = "\n".join(f"  cannot read image {path}: {problem}" for path, problem in list(bad.items())[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ImageReadError(f"{len(bad)} of the {len(images)} images of {what} cannot be read "
                             f"(`simvg check-data` lists every problem):\n{shown}{more}")  # fmt: skip


def format_report(report: DataReport, max_problems: int = 50) -> str:
    """The report as a user reads it: a table of splits, the problems, a last line verdict."""
    lines = [f"data root {report.data_root}", "", "| dataset | split | records | expressions | images |",
             "|---|---|---|---|---|"]  # fmt: skip
    for s in report.splits:
        counts = (s.records, s.expressions, s.images) if s.readable else ("not read (see problems)", "-", "-")
        lines.append(f"| {s.dataset} | {s.split} | " + " | ".join(str(c) for c in counts) + " |")
    datasets = len({s.dataset for s in report.splits})
    lines += ["", f"{datasets} dataset(s), {len(report.splits)} split(s), {report.images} image file(s) checked"]
    if report.problems:
        lines += ["", f"{len(report.problems)} problem(s):"]
        lines += [f"  {p}" for p in report.problems[:max_problems]]
        if len(report.problems) > max_problems:
            lines.append(f"  ... and {len(report.problems) - max_problems} more (--max-problems)")
    else:
        lines += ["", "no problems found"]
    return "\n".join(lines)
