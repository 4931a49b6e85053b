"""``simvg check-data`` and ``simvg convert``: a data root checked up front, every problem named."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from simvg.cli import main
from simvg.data import load_records
from simvg.data.check import check_data_root, inspect_image
from tests.engine.test_train import corrupt_png_data


def test_a_good_data_root_passes_with_a_summary(simvg_root, capsys):
    assert main(["check-data", str(simvg_root)]) == 0
    out = capsys.readouterr().out
    assert "| mydata | train | 2 | 3 | 2 |" in out and "| mydata | val | 1 | 1 | 1 |" in out
    assert "| refcoco-unc | train | 1 | 1 | 1 |" in out
    assert "2 dataset(s), 3 split(s), 4 image file(s) checked" in out and "no problems found" in out


def test_every_problem_is_named_with_its_file_and_record(simvg_root, capsys):
    images = simvg_root / "images" / "mydata"
    (images / "a.png").write_bytes((images / "a.png").read_bytes()[:60])  # truncated
    corrupt_png_data(images / "c.png")  # its pixels broken, its checksums right
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(images / "sub" / "b.png")  # not the record's 30x50
    path = simvg_root / "annotations" / "mydata" / "instances.json"
    data = json.loads(path.read_text())
    data["test"] = []
    path.write_text(json.dumps(data))
    coco = simvg_root / "annotations" / "refcoco-unc" / "instances.json"
    coco.write_text(json.dumps({"train": [{"image_id": 98304, "bbox": [20, 2, 15, 4], "height": 20, "width": 30,
                                           "expressions": ["a person"]}]}))  # fmt: skip
    assert main(["check-data", str(simvg_root)]) == 1
    out = capsys.readouterr().out
    problems = out.split("problem(s):")[1].strip().splitlines()
    assert len(problems) == 5, out
    assert any(f"{images / 'a.png'}: the file is corrupt or truncated" in p and "record 0 (ref_id 1" in p for p in problems)
    assert any(f"{images / 'c.png'}: the file is corrupt or truncated" in p and "split 'val'" in p for p in problems)
    assert any(f"{path}: split 'train', record 1 (ref_id 2" in p and "the image is 10x10 pixels but the record says 30x50"
               in p for p in problems)  # fmt: skip
    assert any(f"{path}: split 'test' has no records" in p for p in problems)
    assert any(f"{coco}: split 'train', record 0" in p and "box (20, 2, 35, 6)" in p and "reaches past the 30x20 image"
               in p for p in problems)  # fmt: skip
    assert "| mydata | test | not read (see problems) |" in out
    # Reading headers only (what `simvg train` does first) finds the truncated file, not the
    # broken pixel data.
    report = check_data_root(simvg_root, ["mydata"], ["val"], decode=False)
    assert report.ok


def test_one_dataset_and_split_json(simvg_root, capsys):
    (simvg_root / "images" / "mydata" / "c.png").unlink()
    assert main(["check-data", str(simvg_root), "--dataset", "mydata", "--split", "val", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [s["split"] for s in report["splits"]] == ["val"]
    assert report["problems"][0]["what"].startswith("image not found")
    assert main(["check-data", str(simvg_root), "--dataset", "mydata", "--split", "testC"]) == 1
    assert "no split 'testC' (available: train, val)" in capsys.readouterr().out
    assert main(["check-data", str(simvg_root / "nowhere")]) == 2


def test_exif_rotated_images_are_checked_upright(tmp_path):
    image = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert (inspect_image(tmp_path / "rot.jpg").width, inspect_image(tmp_path / "rot.jpg").height) == (20, 60)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((tmp_path / "rot.jpg").read_bytes()[:-200])
    assert "truncated" in inspect_image(truncated, decode=False).problem  # no end marker: decoded


def write_images(folder, sizes):
    for name, (width, height) in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(folder / name)


def test_convert_boxes_and_phrases_into_the_simvg_layout(tmp_path, capsys):
    photos = tmp_path / "photos"
    write_images(photos, {"kitchen/1.jpg": (64, 48), "2.png": (40, 40)})
    lines = [
        {"image": "kitchen/1.jpg", "box": [4, 6, 20, 10], "phrase": "the red mug", "split": "train"},
        {"image": "kitchen/1.jpg", "box": [4, 6, 20, 10], "phrase": "mug on the left", "split": "train"},
        {"image": "kitchen/1.jpg", "box": [30, 6, 20, 30], "phrases": ["the kettle", "tall thing"], "split": "train"},
        {"image": "2.png", "box": [1, 1, 10, 10], "phrase": "the small box", "split": "val"},
    ]
    phrases = tmp_path / "phrases.jsonl"
    phrases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "data"
    args = ["convert", "--phrases", str(phrases), "--images", str(photos), "--out", str(out), "--name", "kitchen"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train 2 records (4 phrases), val 1 records (1 phrases); 2 images" in printed and "no problems found" in printed
    train = load_records(out, "kitchen", "train")
    assert [r.expressions for r in train] == [["the red mug", "mug on the left"], ["the kettle", "tall thing"]]
    assert train[0].box_xyxy == (4.0, 6.0, 24.0, 16.0) and (train[0].width, train[0].height) == (64, 48)
    assert train[0].image_path.resolve() == (photos / "kitchen" / "1.jpg").resolve()
    assert main(args) == 2  # never over an existing dataset
    assert "already holds a dataset 'kitchen'" in capsys.readouterr().err
    # Corners instead of COCO boxes, images copied.
    phrases.write_text(json.dumps({"image": "2.png", "box": [1, 2, 10, 12], "phrase": "the box", "split": "val"}) + "\n")
    assert main([*args[:-1], "corners", "--box-format", "xyxy", "--copy"]) == 0
    (val,) = load_records(out, "corners", "val")
    assert val.box_xyxy == (1.0, 2.0, 10.0, 12.0) and not (out / "images" / "corners").is_symlink()
    assert (out / "images" / "corners" / "2.png").is_file() and not (out / "images" / "corners" / "kitchen").exists()


def test_convert_from_coco_annotation_ids(tmp_path, capsys):
    photos = tmp_path / "photos"
    write_images(photos, {"000001.jpg": (64, 48)})
    coco = {"images": [{"id": 1, "file_name": "000001.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 11, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
                            {"id": 12, "image_id": 1, "category_id": 5, "bbox": [30, 3, 10, 12], "area": 120, "iscrowd": 0}],
            "categories": [{"id": 3, "name": "cup"}, {"id": 5, "name": "plate"}]}  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    phrases = tmp_path / "phrases.jsonl"
    phrases.write_text(json.dumps({"ann_id": 12, "phrase": "the plate on the right", "split": "testA"}) + "\n")
    assert main(["convert", "--phrases", str(phrases), "--images", str(photos), "--coco", str(tmp_path / "instances.json"),
                 "--out", str(tmp_path / "data"), "--name", "mine"]) == 0  # fmt: skip
    (record,) = load_records(tmp_path / "data", "mine", "testA")
    assert record.box_xyxy == (30.0, 3.0, 40.0, 15.0) and record.category == 5
    assert [c for _, c in record.scene_objects()] == [3, 5]  # every object of the image, for loss.scene_category


@pytest.mark.parametrize(("line", "message"), [
    ({"image": "a.png", "box": [1, 1, 5, 5], "phrase": "x"}, "phrases.jsonl:2: needs 'split'"),
    ({"image": "a.png", "box": [1, 1, 5, 5], "phrase": " ", "split": "train"}, "phrases.jsonl:2: needs 'phrase'"),
    ({"image": "a.png", "box": [1, 1, 5], "phrase": "x", "split": "train"}, "phrases.jsonl:2: 'box' must be 4"),
    ({"image": "a.png", "box": [50, 1, 5, 5], "phrase": "x", "split": "train"}, "lies outside the 20x20 image"),
    ({"image": "gone.png", "box": [1, 1, 5, 5], "phrase": "x", "split": "train"}, "gone.png: image not found"),
    ({"image": "../a.png", "box": [1, 1, 5, 5], "phrase": "x", "split": "train"}, "must be a path inside"),
    ({"ann_id": 3, "phrase": "x", "split": "train"}, "phrases.jsonl:2: 'ann_id' needs the COCO instances file"),
    ({"phrase": "x", "split": "train"}, "needs 'box' and 'image', or 'ann_id'"),
])  # fmt: skip
def test_convert_names_the_bad_line(tmp_path, capsys, line, message):
    write_images(tmp_path / "photos", {"a.png": (20, 20)})
    phrases = tmp_path / "phrases.jsonl"
    good = {"image": "a.png", "box": [1, 1, 5, 5], "phrase": "fine", "split": "train"}
    phrases.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    assert main(["convert", "--phrases", str(phrases), "--images", str(tmp_path / "photos"), "--out",
                 str(tmp_path / "data"), "--name", "x"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # nothing written


def test_an_image_shared_by_several_records_is_one_problem(synthref_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthref_root, root)
    records = load_records(root, "synthref", "train")
    index = next(i for i, r in enumerate(records) if sum(o.image_path == r.image_path for o in records) == 2)
    records[index].image_path.write_bytes(b"")
    (problem,) = check_data_root(root, ["synthref"], ["train"]).problems
    assert str(problem) == (f"{records[index].image_path}: image file is empty (0 bytes) (used by "
                            f"{root / 'annotations/synthref/instances.json'}: split 'train', record {index} "
                            f"(ref_id {records[index].ref_id}) and 1 more record(s))")
