import json
import pickle

import pytest

from simvg.data import DataFormatError, available_datasets, load_records
from tests.conftest import write_refer_layout


def test_simvg_layout_reads_records_with_xyxy_boxes(simvg_root):
    records = load_records(simvg_root, "mydata", "train")
    assert [r.ref_id for r in records] == [1, 2]
    first, second = records
    assert first.box_xyxy == (5.0, 6.0, 25.0, 16.0)
    assert second.box_xyxy == (10.5, 2.25, 18.5, 32.25)
    assert first.expressions == ["the red box", "red thing"]
    assert first.expression_types == ["attribute", "attribute"]
    assert (first.width, first.height, first.image_id) == (60, 40, 10)
    assert first.image_path == simvg_root / "images" / "mydata" / "a.png"
    assert second.image_path == simvg_root / "images" / "mydata" / "sub" / "b.png"


def test_simvg_layout_coco_images_resolve_to_train2014(simvg_root):
    (record,) = load_records(simvg_root, "refcoco-unc", "train")
    assert record.image_path.name == "COCO_train2014_000000098304.jpg"
    assert record.image_path.parent == simvg_root / "images" / "mscoco" / "train2014"


def test_image_root_override(simvg_root, tmp_path):
    records = load_records(simvg_root, "mydata", "val", image_root=simvg_root / "images", check_images=True)
    assert records[0].image_path.is_file()
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_records(simvg_root, "mydata", "val", image_root=tmp_path / "elsewhere")


def test_refer_layout_reads_refs_and_coco(refer_root):
    (record,) = load_records(refer_root, "refcoco-unc", "train")
    assert record.ref_id == 7
    assert record.box_xyxy == (10.0, 12.0, 30.0, 28.0)
    assert record.expressions == ["man on the left", "left guy"]
    assert (record.width, record.height) == (64, 48)
    assert record.image_path == refer_root / "images" / "mscoco" / "train2014" / "COCO_train2014_000000581857.jpg"
    assert record.category == 1  # the COCO category_id, for loss.category
    # Every annotated object of the image, for loss.scene_category.
    assert record.scene_objects() == [((10.0, 12.0, 30.0, 28.0), 1), ((40.0, 5.0, 50.0, 15.0), 18)]
    (test_record,) = load_records(refer_root, "refcoco-unc", "testA")
    assert test_record.ref_id == 8


def test_simvg_layout_takes_precedence(refer_root):
    (refer_root / "annotations" / "refcoco-unc").mkdir(parents=True)
    records = {"train": [{"image_id": 42, "bbox": [0, 0, 5, 5], "height": 40, "width": 40, "expressions": ["x"]}]}
    (refer_root / "annotations" / "refcoco-unc" / "instances.json").write_text(json.dumps(records))
    (record,) = load_records(refer_root, "refcoco-unc", "train")
    assert record.box_xyxy == (0.0, 0.0, 5.0, 5.0)


def test_available_datasets_lists_both_layouts(simvg_root):
    write_refer_layout(simvg_root)
    assert available_datasets(simvg_root) == ["mydata", "refcoco-unc"]


def test_unknown_dataset_names_itself_and_lists_available(simvg_root):
    with pytest.raises(DataFormatError, match=r"unknown dataset 'refcocoxx'.*available: mydata, refcoco-unc"):
        load_records(simvg_root, "refcocoxx", "train")


def test_unknown_split_lists_splits(simvg_root):
    with pytest.raises(DataFormatError, match=r"no split 'testC'.*train, val"):
        load_records(simvg_root, "mydata", "testC")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [1, 2, 3]}, "bbox must be 4 numbers"),
        ({"bbox": [1, 2, 0, 5]}, "non-positive width"),
        ({"expressions": []}, "expressions must be a non-empty list"),
        ({"expressions": ["  "]}, "expressions must be a non-empty list"),
        ({"width": 0}, "'width' must be a positive integer"),
        ({"expression_types": ["a", "b", "c"]}, "parallel"),
        ({"objects": {"bbox": [1, 2, 3, 4]}}, "'objects' must be a list"),
        ({"objects": [{"bbox": [1, 2, 3, 4]}, {"bbox": "1 2 3 4"}]}, "objects[1] needs a 'bbox' of 4 numbers"),
        ({"objects": [[1, 2, 3, 4]]}, "objects[0] needs a 'bbox'"),
        ({"bbox": [40, 2, 5, 5]}, "lies outside the 30x50 image"),
        ({"bbox": [1, 2, float("nan"), 5]}, "non-finite"),
    ],
)
def test_malformed_record_names_its_id_and_file(simvg_root, change, message):
    path = simvg_root / "annotations" / "mydata" / "instances.json"
    data = json.loads(path.read_text())
    data["train"][1].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as info:
        load_records(simvg_root, "mydata", "train")
    text = str(info.value)
    assert message in text and "ref_id 2" in text and str(path) in text


def test_record_missing_fields_and_bad_json(simvg_root):
    path = simvg_root / "annotations" / "mydata" / "instances.json"
    data = json.loads(path.read_text())
    del data["train"][0]["bbox"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"record 0 \(ref_id 1\): missing field\(s\) bbox"):
        load_records(simvg_root, "mydata", "train")
    path.write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_records(simvg_root, "mydata", "train")


def test_missing_image_names_its_path(simvg_root):
    (simvg_root / "images" / "mydata" / "sub" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*sub/b.png.*ref_id 2"):
        load_records(simvg_root, "mydata", "train")
    assert len(load_records(simvg_root, "mydata", "train", check_images=False)) == 2


def test_refer_layout_unknown_ann_names_ref(tmp_path):
    refs = [{"ref_id": 99, "ann_id": 5555, "image_id": 42, "split": "train", "sentences": [{"sent": "x"}]}]
    root = write_refer_layout(tmp_path / "data", refs)
    with pytest.raises(DataFormatError, match=r"ref_id 99.*5555"):
        load_records(root, "refcoco-unc", "train")


def test_refs_pickle_with_code_is_refused(tmp_path):
    root = write_refer_layout(tmp_path / "data")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with (root / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump([Evil()], f, protocol=2)
    with pytest.raises(DataFormatError, match=r"refuses to load '(__builtin__|builtins).print'"):
        load_records(root, "refcoco-unc", "train")


def test_missing_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root not found"):
        load_records(tmp_path / "nope", "mydata", "train")


def test_synthref_records_list_every_object_with_its_category(synthref_root):
    records = load_records(synthref_root, "synthref", "train")
    for record in records:
        objects = record.scene_objects()
        assert len(objects) == len(record.extra["objects"]) >= 3
        # The referred object is among them, named as its record names it.
        assert (record.box_xyxy, record.category) in objects
    record.extra.pop("objects")
    assert record.scene_objects() is None


def test_split_files_that_are_not_utf8_or_empty_are_named(simvg_root):
    path = simvg_root / "annotations" / "mydata" / "instances.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "val": []}))
    with pytest.raises(DataFormatError, match=r"instances.json: split 'val' has no records"):
        load_records(simvg_root, "mydata", "val")
    path.write_bytes(json.dumps(data).replace("tall bar", "tall b\u00e9r").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"instances.json: not UTF-8"):
        load_records(simvg_root, "mydata", "train")


@pytest.mark.parametrize(("change", "message"), [
    ({"ann_id": None}, "the ref has no ann_id"),
    ({"sentences": [{"sent": None, "raw": None}]}, "no sentences"),
])  # fmt: skip
def test_refer_layout_bad_refs_are_named(tmp_path, change, message):
    ref = {"ref_id": 7, "ann_id": 1001, "image_id": 581857, "split": "train", "sentences": [{"sent": "x"}]}
    ref.update(change)
    ref = {k: v for k, v in ref.items() if v is not None}
    root = write_refer_layout(tmp_path / "data", [ref])
    with pytest.raises(DataFormatError, match=rf"ref_id 7\).*{message}"):
        load_records(root, "refcoco-unc", "train")


@pytest.mark.parametrize(("field", "message"), [("width", "needs positive 'width' and 'height'"),
                                                ("file_name", "has a 'file_name'")])  # fmt: skip
def test_refer_layout_image_entries_without_size_or_name_are_named(tmp_path, field, message):
    ref = {"ref_id": 7, "ann_id": 1001, "image_id": 581857, "split": "train", "sentences": [{"sent": "x"}]}
    root = write_refer_layout(tmp_path / "data", [ref])
    path = root / "refcoco" / "instances.json"
    coco = json.loads(path.read_text())
    del coco["images"][0][field]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataFormatError, match=rf"ref_id 7\).*{message}"):
        load_records(root, "refcoco-unc", "train", check_images=False)


def test_refer_layout_box_outside_its_image_is_named(tmp_path):
    root = write_refer_layout(tmp_path / "data")
    path = root / "refcoco" / "instances.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [70.0, 12.0, 20.0, 16.0]  # the image is 64 wide
    path.write_text(json.dumps(coco))
    with pytest.raises(DataFormatError, match=r"ref_id 7\): annotation 1001: bbox .* outside the 64x48 image"):
        load_records(root, "refcoco-unc", "train", check_images=False)


def test_repeated_ref_ids_are_warned_about(simvg_root):
    path = simvg_root / "annotations" / "mydata" / "instances.json"
    data = json.loads(path.read_text())
    data["train"][1]["ref_id"] = 1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"split 'train': 1 ref_id\(s\) are used by more than one record \(e.g. 1\)"):
        load_records(simvg_root, "mydata", "train")
