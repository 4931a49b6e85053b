"""Torch dataset, preprocessing of one (image, phrase[, box]) sample, resumable sampler, collate."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from simvg.config import AugmentConfig
from simvg.data.images import LoadedImage, load_image
from simvg.data.records import GroundingRecord
from simvg.data.transforms import (
    Letterbox,
    build_train_augmentation,
    large_scale_jitter,
    original_to_letterbox,
    pad_to_square,
    resize_for_model,
    swap_left_right,
)


class PhraseError(ValueError):
    """An empty or unusable phrase."""


@dataclass
class Sample:
    """One preprocessed sample.

    image: (3, S, S) uint8 letterboxed image (normalisation happens in the model).
    pixel_mask: (S, S) bool, True on image pixels, False on padding.
    input_ids: token ids with [CLS]/[SEP], at most max_text_length.
    target: (4,) normalised cx, cy, w, h in the letterbox frame when the phrase has exactly one
        target; None when it has none or several, and at inference.
    target_set: (n, 4) normalised cx, cy, w, h in the letterbox frame, every target of the
        phrase after the same geometry as ``target`` (n = 0: it names nothing); None at inference.
    """

    image: torch.Tensor
    pixel_mask: torch.Tensor
    input_ids: list[int]
    target: torch.Tensor | None
    letterbox: Letterbox
    phrase: str
    meta: dict[str, Any]
    target_set: torch.Tensor | None = None


class Preprocessor:
    """Turns (image, phrase[, box]) into a :class:`Sample`; shared by training and inference.

    resize: "letterbox" or "stretch" (``model.resize``): how the image becomes the S x S input.
    augment: training augmentation (None at evaluation and inference).
    """

    def __init__(self, tokenizer, image_size: int, max_text_length: int, augment: AugmentConfig | None = None,
                 resize: str = "letterbox"):  # fmt: skip
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_text_length = max_text_length
        self.resize = resize
        self.augment = augment
        self.augmentation = build_train_augmentation(image_size, augment) if augment is not None else None

    def tokenize(self, phrase: str, warn: bool = False) -> list[int]:
        if not isinstance(phrase, str) or not phrase.strip():
            raise PhraseError(f"the phrase is empty: {phrase!r}; give a referring expression such as 'the red circle'")
        ids = self.tokenizer(phrase.strip(), add_special_tokens=True, truncation=False)["input_ids"]
        if len(ids) > self.max_text_length:
            if warn:
                kept = self.tokenizer.decode(ids[1 : self.max_text_length - 1])
                warnings.warn(
                    f"phrase truncated to {self.max_text_length} tokens (kept: '{kept}')",
                    stacklevel=3,
                )
            ids = ids[: self.max_text_length - 1] + [ids[-1]]
        return ids

    def __call__(
        self,
        image: LoadedImage,
        phrase: str,
        box_xyxy: Sequence[float] | None = None,
        seed: int | None = None,
        warn_truncation: bool = False,
        meta: dict[str, Any] | None = None,
        landmark_xyxy: Sequence[float] | None = None,
        scene_objects: Sequence[tuple[Sequence[float], Any]] | None = None,
        boxes_xyxy: Sequence[Sequence[float]] | None = None,
    ) -> Sample:
        """``box_xyxy`` (one target) or ``boxes_xyxy`` (every target, possibly none): pixels of
        the original image; neither at inference. With augmentation, a crop keeps every target
        in view (a phrase with no target keeps the whole image); if the augmentation cannot
        keep them all, the sample is not augmented. ``landmark_xyxy`` (optional, training):
        pixels of the object the phrase relates its target to; its normalised (cx, cy) after
        the same geometry lands in ``meta["landmark"]`` (absent when augmentation crops it
        away). ``scene_objects`` (optional, training): every annotated object as (xyxy pixels,
        category); those left in the image after the same geometry land in ``meta["objects"]``
        as (cx, cy normalised, category)."""
        if box_xyxy is not None and boxes_xyxy is not None:
            raise ValueError("give box_xyxy (one target) or boxes_xyxy (every target), not both")
        if box_xyxy is not None:
            boxes_xyxy = [box_xyxy]
        size = self.image_size
        meta = dict(meta or {})
        resized, letterbox = resize_for_model(image.pixels, image.width, image.height, size, self.resize)
        targets = [original_to_letterbox(tuple(b), letterbox) for b in boxes_xyxy] if boxes_xyxy is not None else None
        landmark = original_to_letterbox(tuple(landmark_xyxy), letterbox) if landmark_xyxy is not None else None
        scene = [(original_to_letterbox(tuple(box), letterbox), category) for box, category in scene_objects or []]
        if self.augmentation is not None and self.augment.mode == "lsj" and boxes_xyxy is not None:
            # An independent stream from the one the albumentations steps draw from `seed`.
            rng = np.random.default_rng([seed if seed is not None else 0, 1])
            jittered = self._jitter(image, boxes_xyxy, landmark_xyxy, scene_objects, rng)
            if jittered is not None:
                resized, targets, landmark, scene = jittered
        augmented = None
        if self.augmentation is not None and targets is not None:
            self.augmentation.set_random_seed(seed if seed is not None else 0)
            h, w = resized.shape[:2]
            # The box whose mapping moves the scene objects: the first target, or (no target)
            # the whole image, which also keeps a crop from cutting anything away.
            anchor = _clip(targets[0], w, h) if targets else [0.0, 0.0, float(w), float(h)]
            boxes = [anchor] + [_clip(t, w, h) for t in targets[1:]]
            if landmark is not None:
                boxes.append(_clip(landmark, w, h))
            out = self.augmentation(image=resized, mask=np.ones((h, w), np.uint8), bboxes=boxes,
                                    labels=list(range(len(boxes))))  # fmt: skip
            kept = {int(label): [float(v) for v in box] for label, box in zip(out["labels"], out["bboxes"])}
            n_kept = max(len(targets), 1)  # the targets, or the whole-image anchor
            if all(k in kept for k in range(n_kept)):
                augmented = out
                landmark = kept.get(n_kept) if landmark is not None else None
        if augmented is not None:
            pixels, mask = augmented["image"], augmented["mask"].astype(bool)
            flipped = any(name == "HorizontalFlip" for name, _ in augmented["applied_transforms"])
            if flipped:
                phrase = swap_left_right(phrase)
            # The scene's objects are not given to the box-safe crop (it would keep them all in
            # view); they follow the anchor's own (axis-aligned) mapping instead.
            scene = follow_box(scene, boxes[0], kept[0], flipped, mask)
            targets = [kept[k] for k in range(len(targets))]
        else:
            pixels, mask = pad_to_square(resized, size)
        target_set = None
        if targets is not None:
            xyxy = torch.tensor(targets, dtype=torch.float64).reshape(-1, 4)
            cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            target_set = cxcywh.float() / size
        if landmark is not None:
            meta["landmark"] = ((landmark[0] + landmark[2]) / (2 * size), (landmark[1] + landmark[3]) / (2 * size))
        if scene_objects is not None:
            meta["objects"] = [((b[0] + b[2]) / (2 * size), (b[1] + b[3]) / (2 * size), category) for b, category in scene]
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            pixel_mask=torch.from_numpy(mask),
            input_ids=self.tokenize(phrase, warn=warn_truncation),
            target=target_set[0] if target_set is not None and len(target_set) == 1 else None,
            letterbox=letterbox,
            phrase=phrase,
            meta=meta,
            target_set=target_set,
        )

    def _jitter(
        self,
        image: LoadedImage,
        boxes_xyxy: Sequence[Sequence[float]],
        landmark_xyxy: Sequence[float] | None,
        scene_objects: Sequence[tuple[Sequence[float], Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, list[list[float]], list[float] | None, list] | None:
        """:func:`large_scale_jitter` then the model's resize: the resized image and the
        targets, landmark and scene boxes in it (a landmark cropped away is None, scene objects
        whose centre is cropped away are dropped); None if a target did not survive (then the
        sample goes unjittered). The crop is chosen to keep the box around all the targets
        (SimVG's LargeScaleJitter has one target), or any part of a phrase without one."""
        size = self.image_size
        if boxes_xyxy:
            anchor = [min(b[0] for b in boxes_xyxy), min(b[1] for b in boxes_xyxy),
                      max(b[2] for b in boxes_xyxy), max(b[3] for b in boxes_xyxy)]  # fmt: skip
        else:
            anchor = [0.0, 0.0, float(image.width), float(image.height)]
        jittered, jitter = large_scale_jitter(image.pixels, image.width, image.height, size, anchor,
                                              self.augment.scale, rng)  # fmt: skip
        resized, second = resize_for_model(jittered, jitter.width, jitter.height, size, self.resize)

        def place(box: Sequence[float] | None) -> list[float] | None:
            inside = jitter.box(box) if box is not None else None
            return original_to_letterbox(tuple(inside), second) if inside is not None else None

        targets = [place(box) for box in boxes_xyxy]
        if any(target is None for target in targets):
            return None
        # As with the zoom, an object stays in the scene while its centre is in view.
        scene = [(placed, category) for box, category in scene_objects or []
                 if jitter.holds_centre(box) and (placed := place(box)) is not None]  # fmt: skip
        return resized, targets, place(landmark_xyxy), scene


def follow_box(
    objects: list[tuple[Sequence[float], Any]],
    before: Sequence[float],
    after: Sequence[float],
    flipped: bool,
    visible: np.ndarray,
) -> list[tuple[list[float], Any]]:
    """``objects`` (xyxy, category) moved by the axis-aligned map (scale, shift, horizontal
    flip) that took the box ``before`` to ``after``, clipped to the visible pixels
    (``visible``: (S, S) bool mask of the augmented image); objects whose centre is no
    longer visible are dropped."""
    if not objects:
        return []
    sx = (after[2] - after[0]) / max(before[2] - before[0], 1e-9)
    sy = (after[3] - after[1]) / max(before[3] - before[1], 1e-9)
    rows, cols = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
    if len(rows) == 0:
        return []
    left, right, top, bottom = float(cols[0]), float(cols[-1] + 1), float(rows[0]), float(rows[-1] + 1)
    moved = []
    for (x0, y0, x1, y1), category in objects:
        if flipped:
            x0, x1 = after[2] - sx * (x1 - before[0]), after[2] - sx * (x0 - before[0])
        else:
            x0, x1 = after[0] + sx * (x0 - before[0]), after[0] + sx * (x1 - before[0])
        y0, y1 = after[1] + sy * (y0 - before[1]), after[1] + sy * (y1 - before[1])
        if left <= (x0 + x1) / 2 < right and top <= (y0 + y1) / 2 < bottom:
            moved.append(([max(x0, left), max(y0, top), min(x1, right), min(y1, bottom)], category))
    return moved


def _clip(box: Sequence[float], width: int, height: int) -> list[float]:
    return [max(0.0, box[0]), max(0.0, box[1]), min(width, box[2]), min(height, box[3])]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that depends only on (seed, epoch, index), never on workers or resumption."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**31 - 1)


class GroundingDataset(Dataset):
    """Referring-expression samples from records.

    Training (``train=True``): one item per record; each epoch draws one of its expressions.
    Evaluation: one item per (record, expression), so every expression is counted once.
    Items are addressed by *keys* ``epoch * len(self) + index`` (see :class:`StepSampler`),
    so the random draws depend only on the key: a resumed run sees the same samples.
    ``landmarks``: also carry each phrase's landmark (``meta["landmark"]``, for
    ``loss.landmark_offset``) through the preprocessing; ``scene_objects``: every annotated
    object of the image (``meta["objects"]``, for ``loss.scene_category``).
    """

    def __init__(
        self,
        records: list[GroundingRecord],
        preprocessor: Preprocessor,
        train: bool,
        seed: int = 0,
        max_items: int | None = None,
        landmarks: bool = False,
        scene_objects: bool = False,
    ):
        self.records = records
        self.preprocessor = preprocessor
        self.train = train
        self.seed = seed
        self.landmarks = landmarks
        self.scene_objects = scene_objects
        if train:
            self.items = [(i, -1) for i in range(len(records))]
        else:
            self.items = [(i, j) for i, r in enumerate(records) for j in range(len(r.expressions))]
            if max_items is not None and len(self.items) > max_items:
                # An evenly spaced subset keeps every split's mix of expression types.
                picks = np.linspace(0, len(self.items) - 1, max_items).round().astype(int)
                self.items = [self.items[k] for k in picks]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int) -> Sample:
        if not self.train and not 0 <= key < len(self.items):
            raise IndexError(key)
        epoch, index = divmod(int(key), len(self.items))
        record_index, expression_index = self.items[index]
        record = self.records[record_index]
        seed = sample_seed(self.seed, epoch, index)
        if expression_index < 0:
            expression_index = int(np.random.default_rng(seed).integers(len(record.expressions)))
        image = load_image(record.image_path)
        if (image.width, image.height) != (record.width, record.height):
            raise ValueError(
                f"{record.image_path}: image is {image.width}x{image.height} but its record "
                f"(ref_id {record.ref_id}) says {record.width}x{record.height}"
            )
        types = record.expression_types
        meta = {
            "record_index": record_index,
            "expression_index": expression_index,
            "ref_id": record.ref_id,
            "expression_type": types[expression_index] if types else None,
            "category": record.category,
        }
        return self.preprocessor(
            image,
            record.expressions[expression_index],
            boxes_xyxy=record.boxes_xyxy,
            seed=seed if self.train else None,
            meta=meta,
            landmark_xyxy=record.landmark_box(expression_index) if self.landmarks else None,
            scene_objects=record.scene_objects() if self.scene_objects else None,
        )


class StepSampler(Sampler[list[int]]):
    """Batches of dataset keys for a step-based run, resumable at any step.

    Each epoch is a permutation seeded by (seed, epoch); the stream of keys runs across
    epoch boundaries. With ``world_size`` > 1 every rank takes a disjoint stride of each
    permutation. Step ``i`` always gets the same keys, so starting at ``start_step`` is an
    exact continuation.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        num_steps: int,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items < world_size:
            raise ValueError(f"dataset has {num_items} items, fewer than the {world_size} processes")
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self.per_epoch = num_items // world_size

    def _keys(self, start: int) -> Iterator[int]:
        epoch, offset = divmod(start, self.per_epoch)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
            order = torch.randperm(self.num_items, generator=generator)[self.rank :: self.world_size]
            for index in order[offset : self.per_epoch].tolist():
                yield epoch * self.num_items + index
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        keys = self._keys(self.start_step * self.batch_size)
        for _ in range(self.start_step, self.num_steps):
            yield [next(keys) for _ in range(self.batch_size)]

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)


@dataclass
class Batch:
    """A collated batch.

    images: (B, 3, S, S) uint8; pixel_mask: (B, S, S) bool; input_ids, text_mask: (B, L);
    targets: (B, 4) normalised cx, cy, w, h when every sample has exactly one target, else None.
    target_sets: B tensors (n_i, 4) normalised cx, cy, w, h, every target of each sample (n_i
        may be 0 or several); None at inference.
    """

    images: torch.Tensor
    pixel_mask: torch.Tensor
    input_ids: torch.Tensor
    text_mask: torch.Tensor
    targets: torch.Tensor | None
    letterboxes: list[Letterbox]
    phrases: list[str]
    meta: list[dict[str, Any]]
    target_sets: list[torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        sets = [move(t) for t in self.target_sets] if self.target_sets is not None else None
        return Batch(
            move(self.images), move(self.pixel_mask), move(self.input_ids), move(self.text_mask),
            move(self.targets), self.letterboxes, self.phrases, self.meta, sets,
        )  # fmt: skip


class Collator:
    """Stacks samples and pads token ids with the tokenizer's pad id."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[Sample]) -> Batch:
        length = max(len(s.input_ids) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        text_mask = torch.zeros((len(samples), length), dtype=torch.bool)
        for i, s in enumerate(samples):
            input_ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
            text_mask[i, : len(s.input_ids)] = True
        has_targets = all(s.target is not None for s in samples)
        has_sets = all(s.target_set is not None for s in samples)
        return Batch(
            images=torch.stack([s.image for s in samples]),
            pixel_mask=torch.stack([s.pixel_mask for s in samples]),
            input_ids=input_ids,
            text_mask=text_mask,
            targets=torch.stack([s.target for s in samples]) if has_targets else None,
            letterboxes=[s.letterbox for s in samples],
            phrases=[s.phrase for s in samples],
            meta=[s.meta for s in samples],
            target_sets=[s.target_set for s in samples] if has_sets else None,
        )
