"""Generalized grounding data: records with any number of targets, gRefCOCO as released and in
SimVG's layout, SimVG's layout names, and target sets through preprocessing and batching."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from simvg.config import AugmentConfig
from simvg.data import DataFormatError, GroundingRecord, available_datasets, load_records
from simvg.data.dataset import Collator, GroundingDataset, Preprocessor
from simvg.data.images import LoadedImage
from simvg.data.transforms import letterbox_to_original
from simvg.models.pretrained import load_tokenizer
from tests.conftest import draw_scene

COCO_IMAGE = "COCO_train2014_000000000042.jpg"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


# --- records ---------------------------------------------------------------------------------


def test_single_box_records_expose_a_one_box_list_and_generalized_ones_no_single_box():
    common = {"image_path": "a.png", "expressions": ["x"], "ref_id": 3, "image_id": 1, "width": 9, "height": 9}
    single = GroundingRecord(box_xyxy=(1, 2, 3, 4), **common)
    assert single.boxes_xyxy == [(1.0, 2.0, 3.0, 4.0)] and single.single_box() == (1.0, 2.0, 3.0, 4.0)
    assert GroundingRecord(box_xyxy=None, boxes_xyxy=[(1, 2, 3, 4)], **common).box_xyxy == (1.0, 2.0, 3.0, 4.0)
    for boxes in ([], [(1, 2, 3, 4), (5, 5, 8, 8)]):
        record = GroundingRecord(box_xyxy=None, boxes_xyxy=boxes, dataset="d", split="val", **common)
        assert record.box_xyxy is None and not record.is_single
        with pytest.raises(DataFormatError, match=rf"split 'val', ref_id 3: the record refers to {len(boxes)} objects"):
            record.single_box()
    with pytest.raises(ValueError, match="give box_xyxy or boxes_xyxy"):
        GroundingRecord(box_xyxy=None, **common)
    with pytest.raises(ValueError, match="disagrees"):
        GroundingRecord(box_xyxy=(0, 0, 1, 1), boxes_xyxy=[(1, 2, 3, 4)], **common)


# --- gRefCOCO as released: grefcoco/grefs(unc).json + instances.json -------------------------


def write_grefcoco(root: Path, refs: list[dict] | None = None, pickled: bool = False) -> Path:
    """The gRefCOCO release's layout, with one image holding three people and a dog."""
    folder = root / "grefcoco"
    folder.mkdir(parents=True, exist_ok=True)
    annotations = [
        {"id": 11, "image_id": 42, "category_id": 1, "bbox": [2.0, 3.0, 10.0, 20.0], "area": 200, "iscrowd": 0},
        {"id": 12, "image_id": 42, "category_id": 1, "bbox": [20.0, 3.0, 10.0, 20.0], "area": 200, "iscrowd": 0},
        {"id": 13, "image_id": 42, "category_id": 18, "bbox": [40.0, 25.0, 15.0, 10.0], "area": 150, "iscrowd": 0},
    ]
    coco = {"images": [{"id": 42, "file_name": COCO_IMAGE, "width": 64, "height": 48}], "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}  # fmt: skip
    (folder / "instances.json").write_text(json.dumps(coco))
    if refs is None:
        refs = [
            {"ref_id": 1, "ann_id": [11, 12], "category_id": [1, 1], "image_id": 42, "split": "val",
             "file_name": "COCO_train2014_000000000042_11.jpg", "no_target": False, "sent_ids": [1, 2],
             "sentences": [{"sent": "two people", "raw": "Two people", "tokens": ["two", "people"], "sent_id": 1},
                           {"sent": "both persons", "raw": "both persons", "tokens": [], "sent_id": 2}]},
            {"ref_id": 2, "ann_id": [13], "category_id": [18], "image_id": 42, "split": "val", "no_target": False,
             "sentences": [{"sent": "the dog", "raw": "the dog", "tokens": [], "sent_id": 3}]},
            {"ref_id": 3, "ann_id": [-1], "category_id": [-1], "image_id": 42, "split": "val", "no_target": True,
             "sentences": [{"sent": "the cat on the sofa", "raw": "the cat on the sofa", "tokens": [], "sent_id": 4}]},
            {"ref_id": 4, "ann_id": 12, "category_id": 1, "image_id": 42, "split": "train",
             "sentences": [{"sent": "right person", "raw": "right person", "tokens": [], "sent_id": 5}]},
        ]  # fmt: skip
    if pickled:
        with (folder / "grefs(unc).p").open("wb") as f:
            pickle.dump(refs, f, protocol=2)
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    draw_scene(root / "images" / "mscoco" / "train2014" / COCO_IMAGE, 64, 48, [2, 3, 10, 20])
    return root


@pytest.mark.parametrize("pickled", [False, True])
def test_grefcoco_release_gives_every_box_or_none(tmp_path, pickled):
    root = write_grefcoco(tmp_path / "data", pickled=pickled)
    several, one, none = load_records(root, "grefcoco-unc", "val")
    assert several.boxes_xyxy == [(2.0, 3.0, 12.0, 23.0), (20.0, 3.0, 30.0, 23.0)] and several.box_xyxy is None
    assert several.expressions == ["two people", "both persons"] and several.category is None
    assert one.box_xyxy == (40.0, 25.0, 55.0, 35.0) and one.category == 18
    assert none.boxes_xyxy == [] and none.box_xyxy is None and none.expressions == ["the cat on the sofa"]
    assert none.image_path == root / "images" / "mscoco" / "train2014" / COCO_IMAGE
    assert len(none.scene_objects()) == 3  # the image's annotations, for loss.scene_category
    (plain,) = load_records(root, "grefcoco", "train")  # SimVG's name for the same data; a plain ann_id
    assert plain.box_xyxy == (20.0, 3.0, 30.0, 23.0)
    assert available_datasets(root) == ["grefcoco-unc"]


@pytest.mark.parametrize(("change", "message"), [
    ({"ann_id": [11, 99]}, r"annotation id 99 not found in .*instances.json"),
    ({"ann_id": [-1], "no_target": False}, r"no_target is False but ann_id is \[-1\]"),
    ({"ann_id": [11], "no_target": True}, r"no_target is True but ann_id is \[11\]"),
    ({"ann_id": [11, -1]}, r"ann_id must list annotation ids, or be \[-1\] for no target"),
    ({"ann_id": []}, "ann_id must list annotation ids"),
])  # fmt: skip
def test_grefcoco_bad_refs_name_file_and_ref(tmp_path, change, message):
    ref = {"ref_id": 77, "ann_id": [11], "image_id": 42, "split": "val", "sentences": [{"sent": "x"}]} | change
    root = write_grefcoco(tmp_path / "data", [ref])
    with pytest.raises(DataFormatError, match=rf"grefs\(unc\).json: ref 0 \(ref_id 77\): {message}"):
        load_records(root, "grefcoco-unc", "val")


# --- SimVG's layout: per-expression box lists (its GREC files), shared lists ------------------


def write_simvg_layout(root: Path, name: str, split_records: dict) -> Path:
    (root / "annotations" / name).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / name / "instances.json").write_text(json.dumps(split_records))
    return root


def simvg_grec_record() -> dict:
    """A training record as SimVG's conversion script writes it: one per image, one box list and
    one annotation list per expression, MDETR's all-zero box with category -1 for no target."""
    person = {"area": 200, "iscrowd": 0, "category_id": 1, "empty": False}
    return {
        "image_id": 42, "height": 48, "width": 64,
        "expressions": ["two people", "the dog", "the cat", "the left and right person"],
        "bbox": [[[2, 3, 10, 20], [20, 3, 10, 20]], [[40, 25, 15, 10]], [[0, 0, 0, 0]], [[20, 3, 10, 20], [2, 3, 10, 20]]],
        "annotations": [[person | {"bbox": [2, 3, 10, 20]}, person | {"bbox": [20, 3, 10, 20]}],
                        [{"category_id": 18, "bbox": [40, 25, 15, 10], "empty": False}],
                        [{"category_id": -1, "bbox": [0, 0, 0, 0], "empty": True}],
                        [person | {"bbox": [20, 3, 10, 20]}, person | {"bbox": [2, 3, 10, 20]}]],
    }  # fmt: skip


@pytest.mark.parametrize("name", ["grefcoco", "grefs", "grefs_grec"])
def test_simvg_grec_layout_groups_expressions_by_box_set(tmp_path, name):
    val = {"image_id": 42, "height": 48, "width": 64, "expressions": ["nobody here"], "bbox": [[[0, 0, 0, 0]]],
           "annotations": [[{"category_id": -1, "bbox": [0, 0, 0, 0], "empty": True}]]}  # fmt: skip
    root = write_simvg_layout(tmp_path / "data", name, {"train": [simvg_grec_record()], "val": [val]})
    draw_scene(root / "images" / "mscoco" / "train2014" / COCO_IMAGE, 64, 48, [2, 3, 10, 20])
    people, dog, cat = load_records(root, name, "train")
    assert people.expressions == ["two people", "the left and right person"]  # the same two boxes, in any order
    assert people.boxes_xyxy == [(2.0, 3.0, 12.0, 23.0), (20.0, 3.0, 30.0, 23.0)] and people.box_xyxy is None
    assert dog.box_xyxy == (40.0, 25.0, 55.0, 35.0) and dog.category == 18
    assert cat.boxes_xyxy == [] and cat.expressions == ["the cat"]
    assert [r.ref_id for r in (people, dog, cat)] == ["0.0", "0.1", "0.2"]
    assert people.image_path == root / "images" / "mscoco" / "train2014" / COCO_IMAGE
    (nobody,) = load_records(root, name, "val")
    assert nobody.boxes_xyxy == [] and nobody.ref_id == 0


def test_simvg_layout_shared_box_lists_and_their_errors(tmp_path):
    records = [
        {"image_id": 1, "file_name": "a.png", "height": 40, "width": 40, "expressions": ["both", "the pair"],
         "bbox": [[1, 1, 5, 5], [20, 20, 5, 5]], "expression_types": ["multi", "multi"]},
        {"image_id": 1, "file_name": "a.png", "height": 40, "width": 40, "expressions": ["nothing"], "bbox": []},
    ]  # fmt: skip
    root = write_simvg_layout(tmp_path / "data", "mine", {"train": records})
    draw_scene(root / "images" / "mine" / "a.png", 40, 40, [1, 1, 5, 5])
    pair, nothing = load_records(root, "mine", "train")
    assert pair.boxes_xyxy == [(1.0, 1.0, 6.0, 6.0), (20.0, 20.0, 25.0, 25.0)] and pair.ref_id == 0
    assert pair.expression_types == ["multi", "multi"] and nothing.boxes_xyxy == []
    path = root / "annotations" / "mine" / "instances.json"
    for bbox, message in [
        ([[[1, 1, 5, 5]]], "bbox holds 1 box lists but there are 2 expressions"),
        ([[1, 1, 5, 5], [1, 1, 0, 5]], "expression 0, box 1: bbox has non-positive width"),
        ([[[1, 1, 5, 5]], [[1, 1, 5]]], r"bbox must be \[x, y, w, h\], a list of such boxes, or one list"),
    ]:
        path.write_text(json.dumps({"train": [records[0] | {"bbox": bbox}]}))
        with pytest.raises(DataFormatError, match=rf"instances.json: split 'train', record 0 \(ref_id 0\): {message}"):
            load_records(root, "mine", "train")
    marked = records[0] | {"bbox": [[[1, 1, 5, 5]], []], "annotations": [[{"category_id": -1}], []]}
    path.write_text(json.dumps({"train": [marked]}))
    with pytest.raises(DataFormatError, match="expression 0 is marked no-target in 'annotations' but has boxes"):
        load_records(root, "mine", "train")


# --- SimVG's layout names: images/saiaprtc12, mixed sources; the older names still read --------


def test_referit_and_mixed_images_resolve_as_simvg_names_them(tmp_path):
    record = {"image_id": 7, "bbox": [1, 1, 4, 4], "height": 16, "width": 16, "expressions": ["x"]}
    root = write_simvg_layout(tmp_path / "data", "referitgame-berkeley", {"test": [record]})
    sources = ["coco", "flickr", "vg", "saiaprtc12", "referit", "visual-genome", "flickr30k"]
    write_simvg_layout(root, "mixed", {"train": [record | {"data_source": s} for s in sources]})
    images = root / "images"
    (ref,) = load_records(root, "referitgame-berkeley", "test", check_images=False)
    assert ref.image_path == images / "saiaprtc12" / "7.jpg"
    paths = [r.image_path for r in load_records(root, "mixed", "train", check_images=False)]
    assert paths == [images / "mscoco" / "train2014" / "COCO_train2014_000000000007.jpg",
                     images / "flickr30k" / "7.jpg", images / "visual-genome" / "7.jpg", images / "saiaprtc12" / "7.jpg",
                     images / "saiaprtc12" / "7.jpg", images / "visual-genome" / "7.jpg", images / "flickr30k" / "7.jpg"]  # fmt: skip
    # A data root that still has the older folder name keeps working.
    draw_scene(images / "saiapr_tc-12" / "7.jpg", 16, 16, [1, 1, 4, 4])
    (ref,) = load_records(root, "referitgame-berkeley", "test")
    assert ref.image_path == images / "saiapr_tc-12" / "7.jpg"
    draw_scene(images / "saiaprtc12" / "7.jpg", 16, 16, [1, 1, 4, 4])  # both: the official one wins
    assert load_records(root, "referitgame-berkeley", "test")[0].image_path == images / "saiaprtc12" / "7.jpg"
    write_simvg_layout(root, "mixed", {"train": [record | {"data_source": "pinterest"}]})
    with pytest.raises(DataFormatError, match=r"record 0 \(ref_id 0\): cannot resolve .*unknown data_source 'pinterest'"):
        load_records(root, "mixed", "train", check_images=False)


# --- target sets through preprocessing and batching -------------------------------------------


def red_scene(width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> LoadedImage:
    pixels = np.full((height, width, 3), 90, np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = (250, 10, 10)
    return LoadedImage(pixels, width, height)


def red_fraction(image: torch.Tensor, cxcywh: torch.Tensor, size: int) -> float:
    cx, cy, w, h = (cxcywh * size).tolist()
    x0, y0, x1, y1 = (round(v) for v in (cx - w / 2 + 1, cy - h / 2 + 1, cx + w / 2 - 1, cy + h / 2 - 1))
    crop = image[:, y0:y1, x0:x1].int()
    return float(((crop[0] > 150) & (crop[1] < 90) & (crop[2] < 90)).float().mean())


def test_target_sets_map_back_to_the_original_boxes(tokenizer):
    boxes = [(10.0, 20.0, 50.0, 60.0), (100.0, 5.0, 180.0, 40.0), (150.0, 90.0, 190.0, 140.0)]
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20)
    image = red_scene(200, 150, [tuple(int(v) for v in b) for b in boxes])
    sample = pre(image, "the red boxes", boxes_xyxy=boxes)
    assert sample.target is None and sample.target_set.shape == (3, 4) and sample.target_set.dtype == torch.float32
    back = letterbox_to_original(sample.target_set, 96, [sample.letterbox] * 3)
    assert torch.allclose(back, torch.tensor(boxes, dtype=back.dtype), atol=0.5)
    one = pre(image, "the red box", boxes_xyxy=boxes[:1])
    assert torch.equal(one.target, pre(image, "the red box", boxes[0]).target)
    assert torch.equal(one.target_set, one.target[None])
    none = pre(image, "the green box", boxes_xyxy=[])
    assert none.target is None and none.target_set.shape == (0, 4)
    assert pre(image, "the red box").target_set is None  # inference: no targets at all
    with pytest.raises(ValueError, match="not both"):
        pre(image, "x", boxes[0], boxes_xyxy=boxes)


def test_crops_keep_every_target_and_a_no_target_phrase_keeps_the_whole_image(tokenizer):
    boxes = [(5, 5, 35, 35), (160, 20, 195, 50), (90, 110, 120, 145)]
    image = red_scene(200, 150, boxes)
    zoom = AugmentConfig(scale=[1.5, 2.5], crop=True, flip=0.5, color=0.0)
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20, augment=zoom)
    whole = 96 * 96 * 150 / 200  # the letterboxed image's area in input pixels
    red_share = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) / (200 * 150)
    for seed in range(10):
        sample = pre(image, "the red squares", boxes_xyxy=[tuple(map(float, b)) for b in boxes], seed=seed)
        assert sample.target_set.shape == (3, 4)
        for target in sample.target_set:
            assert red_fraction(sample.image, target, 96) > 0.9
        nothing = pre(image, "the blue square", boxes_xyxy=[], seed=seed)
        assert nothing.target_set.shape == (0, 4)
        visible = nothing.pixel_mask.sum().item()
        assert visible <= whole + 96  # never zoomed in: the whole image (or less) ...
        red = ((nothing.image[0] > 150) & (nothing.image[1] < 90) & (nothing.image[2] < 90)).sum().item()
        assert red / visible == pytest.approx(red_share, rel=0.15)  # ... and all of it, red squares included


def test_batches_carry_target_sets_and_single_targets_only_when_all_have_one(tokenizer):
    pre = Preprocessor(tokenizer, image_size=64, max_text_length=20)
    image = red_scene(64, 64, [(5, 5, 20, 20)])
    one = pre(image, "a", boxes_xyxy=[(5.0, 5.0, 20.0, 20.0)])
    two = pre(image, "b", boxes_xyxy=[(5.0, 5.0, 20.0, 20.0), (30.0, 30.0, 40.0, 40.0)])
    none = pre(image, "c", boxes_xyxy=[])
    collate = Collator(tokenizer.pad_token_id)
    single = collate([one, one])
    assert single.targets.shape == (2, 4) and [len(t) for t in single.target_sets] == [1, 1]
    assert torch.equal(single.targets[0], single.target_sets[0][0])
    mixed = collate([one, two, none])
    assert mixed.targets is None and [t.shape for t in mixed.target_sets] == [(1, 4), (2, 4), (0, 4)]
    assert [t.shape for t in mixed.to("cpu").target_sets] == [(1, 4), (2, 4), (0, 4)]
    assert collate([pre(image, "d"), pre(image, "e")]).target_sets is None


def test_datasets_of_generalized_records_give_each_phrase_its_target_set(tmp_path, tokenizer):
    root = write_grefcoco(tmp_path / "data")
    records = load_records(root, "grefcoco-unc", "val")
    pre = Preprocessor(tokenizer, image_size=64, max_text_length=20)
    samples = list(GroundingDataset(records, pre, train=False))
    assert [len(s.target_set) for s in samples] == [2, 2, 1, 0]
    batch = Collator(tokenizer.pad_token_id)(samples)
    back = letterbox_to_original(batch.target_sets[0], 64, [batch.letterboxes[0]] * 2)
    assert torch.allclose(back, torch.tensor(records[0].boxes_xyxy, dtype=back.dtype), atol=0.5)
    training = GroundingDataset(records, Preprocessor(tokenizer, 64, 20, AugmentConfig()), train=True, seed=2)
    assert [len(training[k].target_set) for k in range(3)] == [2, 1, 0]
