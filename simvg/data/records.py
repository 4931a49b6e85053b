"""The grounding record: one referred object in one image, with its expressions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataFormatError(ValueError):
    """An annotation file or record that cannot be read; the message names file and record."""


@dataclass
class GroundingRecord:
    """One referred object.

    image_path: the image file.
    box_xyxy: the target box, (x0, y0, x1, y1) float pixels of the original image.
    expressions: the phrases that refer to the object (at least one).
    expression_types: optional type of each expression (SynthRef: attribute, location,
        relation, comparison), parallel to ``expressions``.
    """

    image_path: Path
    box_xyxy: tuple[float, float, float, float]
    expressions: list[str]
    ref_id: int | str
    image_id: int | str
    width: int
    height: int
    expression_types: list[str] | None = None
    dataset: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.box_xyxy = tuple(float(v) for v in self.box_xyxy)  # type: ignore[assignment]

    @property
    def category(self) -> str | int | None:
        """The referred object's category where the annotations give one: ``category_id``
        (COCO, in both RefCOCO layouts) or ``category`` (SynthRef: "large yellow circle")."""
        category_id = self.extra.get("category_id")
        return category_id if category_id is not None else self.extra.get("category")


def xywh_to_xyxy(box: list[float] | tuple[float, ...]) -> tuple[float, float, float, float]:
    """COCO (x, y, w, h) pixels -> (x0, y0, x1, y1) pixels."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)
