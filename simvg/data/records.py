"""The grounding record: what a set of expressions refers to in one image (one object, several,
or none), with the expressions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


class DataFormatError(ValueError):
    """An annotation file or record that cannot be read; the message names file and record."""


# Entries of ``GroundingRecord.extra`` that hold one item per expression (SynthRef's programs).
PER_EXPRESSION_EXTRAS = ("programs",)


Box = tuple[float, float, float, float]


@dataclass
class GroundingRecord:
    """One referred object, or (generalized grounding) a set of referred objects, possibly empty.

    image_path: the image file.
    box_xyxy: the target box, (x0, y0, x1, y1) float pixels of the original image, when the
        record refers to exactly one object; None when it refers to none or to several.
    boxes_xyxy: every target box, (x0, y0, x1, y1) float pixels of the original image; empty
        when the expressions name nothing in the image ("no target"). Give either this or
        ``box_xyxy``; a single-box record has ``boxes_xyxy == [box_xyxy]``.
    expressions: the phrases that refer to the object(s) (at least one).
    expression_types: optional type of each expression (SynthRef: attribute, location,
        relation, comparison), parallel to ``expressions``.
    extra: whatever else the annotations give; the entries named in
        :data:`PER_EXPRESSION_EXTRAS` are parallel to ``expressions`` too.
    """

    image_path: Path
    box_xyxy: Box | None
    expressions: list[str]
    ref_id: int | str
    image_id: int | str
    width: int
    height: int
    expression_types: list[str] | None = None
    dataset: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)
    boxes_xyxy: list[Box] | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        if self.boxes_xyxy is None:
            if self.box_xyxy is None:
                raise ValueError(f"record {self.ref_id!r}: give box_xyxy or boxes_xyxy (an empty list: no target)")
            self.boxes_xyxy = [self.box_xyxy]
        boxes = [tuple(float(v) for v in box) for box in self.boxes_xyxy]
        single = boxes[0] if len(boxes) == 1 else None
        if self.box_xyxy is not None and tuple(float(v) for v in self.box_xyxy) != single:
            raise ValueError(f"record {self.ref_id!r}: box_xyxy {self.box_xyxy} disagrees with boxes_xyxy {boxes}")
        self.boxes_xyxy = boxes  # type: ignore[assignment]
        self.box_xyxy = single  # type: ignore[assignment]

    @property
    def is_single(self) -> bool:
        """Whether the record refers to exactly one object (classic referring expressions)."""
        return self.box_xyxy is not None

    def single_box(self) -> Box:
        """``box_xyxy``, for code that needs exactly one target; raises DataFormatError naming the
        record when it refers to no object or to several (generalized grounding data)."""
        if self.box_xyxy is None:
            raise DataFormatError(
                f"dataset '{self.dataset}', split '{self.split}', ref_id {self.ref_id}: the record refers to "
                f"{len(self.boxes_xyxy or [])} objects, but this needs exactly one target box (single-target "
                "grounding); use generalized grounding (several queries) for data with no-target or "
                "multi-target expressions"
            )
        return self.box_xyxy

    @property
    def category(self) -> str | int | None:
        """The referred object's category where the annotations give one: ``category_id``
        (COCO, in both RefCOCO layouts) or ``category`` (SynthRef: "large yellow circle")."""
        category_id = self.extra.get("category_id")
        return category_id if category_id is not None else self.extra.get("category")

    def scene_objects(self) -> list[tuple[tuple[float, float, float, float], str | int]] | None:
        """Every annotated object of the image as ((x0, y0, x1, y1) pixels, category), where the
        annotations list them: SynthRef's ``objects`` (category "size colour shape", as
        :attr:`category`) or the COCO annotations of a refer-layout image (``category_id``);
        None otherwise. Objects without a category or with an empty box are left out."""
        objects = self.extra.get("objects")
        if not objects:
            return None
        listed = []
        for obj in objects:
            category = obj.get("category_id")
            if category is None and all(obj.get(k) for k in ("size", "color", "shape")):
                category = f"{obj['size']} {obj['color']} {obj['shape']}"
            box = obj.get("bbox")
            if category is None or not box or len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                continue
            listed.append((xywh_to_xyxy(box), category))
        return listed

    def landmark_box(self, expression_index: int) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) pixels of the object expression ``expression_index`` relates its
        target to ("the circle left of *the red square*"), where the annotations say: SynthRef's
        ``programs`` (its landmark description) and ``objects``; None otherwise, or when the
        description does not match exactly one object."""
        programs, objects = self.extra.get("programs"), self.extra.get("objects")
        if not programs or not objects or expression_index >= len(programs):
            return None
        landmark = (programs[expression_index] or {}).get("landmark")
        if not landmark:
            return None
        matches = [o for o in objects if all(v is None or o.get(k) == v for k, v in landmark.items())]
        return xywh_to_xyxy(matches[0]["bbox"]) if len(matches) == 1 else None


def is_box(value: object) -> bool:
    """Whether ``value`` is a list or tuple of 4 numbers (not bools)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def check_box(bbox: object, width: int, height: int, where: str) -> None:
    """Raise DataFormatError (prefixed ``where``) unless ``bbox`` is a COCO [x, y, w, h] of 4
    finite numbers with a positive size that overlaps the ``width`` x ``height`` image."""
    if not is_box(bbox):
        raise DataFormatError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        raise DataFormatError(f"{where}: bbox holds a non-finite number: {bbox!r}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise DataFormatError(f"{where}: bbox has non-positive width or height: {bbox!r}")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise DataFormatError(f"{where}: bbox {bbox!r} lies outside the {width}x{height} image")


def xywh_to_xyxy(box: list[float] | tuple[float, ...]) -> tuple[float, float, float, float]:
    """COCO (x, y, w, h) pixels -> (x0, y0, x1, y1) pixels."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)
