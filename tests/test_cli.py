"""The ``simvg`` command as a user runs it: synth, eval, predict (single and batch), bench, export."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from simvg.cli import main, user_message
from simvg.data.images import ImageReadError


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_run):
    return tiny_run / "last"


def test_synth_writes_the_simvg_layout(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--testA", "1", "--testB", "1",
                 "--seed", "5", "--image-size", "128"]) == 0  # fmt: skip
    data = json.loads((tmp_path / "annotations" / "synthref" / "instances.json").read_text())
    assert set(data) == {"train", "val", "testA", "testB"}
    record = data["val"][0]
    assert Image.open(tmp_path / "images" / "synthref" / record["file_name"]).size == (128, 128)
    assert "wrote 7 images" in capsys.readouterr().out


def test_synth_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--train", "-1"]) == 2
    assert "train" in capsys.readouterr().err


def test_eval_json_and_saved_predictions(tiny_checkpoint, synthref_root, tmp_path, capsys):
    predictions = tmp_path / "pred.jsonl"
    args = ["eval", str(tiny_checkpoint), "--data-root", str(synthref_root), "--dataset", "synthref",
            "--split", "val", "--json", "--save-predictions", str(predictions)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = report["metrics"]
    assert set(metrics) == {"token", "decoder"}
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    token_rows = [r for r in rows if r["branch"] == "token"]
    assert len(token_rows) == metrics["token"]["count"]
    expected = 100 * sum(r["iou"] >= 0.5 for r in token_rows) / len(token_rows)
    assert metrics["token"]["acc@0.5"] == pytest.approx(expected)
    assert set(metrics["token"]["per_type"]) <= {"attribute", "location", "relation", "comparison"}
    assert {"expression", "pred_box", "gt_box", "iou", "score", "official_iou", "pred_boxes", "gt_boxes"} <= set(rows[0])
    assert 0 <= metrics["token"]["official_acc@0.5"] <= 100 and metrics["token"]["official_batch_size"] == 64
    # Every expression of the split is counted once.
    data = json.loads((synthref_root / "annotations" / "synthref" / "instances.json").read_text())
    assert len(token_rows) == sum(len(r["expressions"]) for r in data["val"])


def test_eval_single_branch_text_output(tiny_checkpoint, synthref_root, capsys):
    args = ["eval", str(tiny_checkpoint), "--data-root", str(synthref_root), "--dataset", "synthref",
            "--split", "testB", "--branch", "token"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[token] Acc@0.5" in out and "[decoder]" not in out
    assert "SimVG's protocol (IoU in the resized frame, mean of per-batch accuracies, batch 64): Acc@0.5" in out
    assert "relation" in out or "comparison" in out


def test_predict_single_json_and_drawing(tiny_checkpoint, synthref_root, tmp_path, capsys):
    image = next((synthref_root / "images" / "synthref" / "val").glob("*.png"))
    out_png = tmp_path / "drawn.png"
    assert main(["predict", str(tiny_checkpoint), "--image", str(image), "--text", "the red circle",
                 "--json", "--out", str(out_png)]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    x0, y0, x1, y1 = result["box"]
    width, height = Image.open(image).size
    assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height and 0 <= result["score"] <= 1
    assert Image.open(out_png).size == (width, height)


def test_predict_batch_over_a_folder(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((30, 30), 50, np.uint8)).save(folder / "b.jpg")
    phrases = tmp_path / "phrases.jsonl"
    lines = [{"image": "a.png", "text": "left thing"}, {"image": "b.jpg", "text": "the square"},
             {"image": "a.png", "text": "right thing"}]  # fmt: skip
    phrases.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "out.jsonl"
    assert main(["predict", str(tiny_checkpoint), "--image", str(folder), "--phrases", str(phrases),
                 "--output", str(output), "--out", str(tmp_path / "drawn")]) == 0  # fmt: skip
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted((r["image"], r["text"]) for r in rows) == sorted((d["image"], d["text"]) for d in lines)
    assert {p.name for p in (tmp_path / "drawn").iterdir()} == {"a_grounded.png", "b_grounded.png"}


def test_predict_batch_drawings_of_images_sharing_a_stem_are_kept_apart(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "a.jpg", "sub/a.png"):
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(folder / name)
    phrases = tmp_path / "phrases.jsonl"
    phrases.write_text("".join(json.dumps({"image": n, "text": "the thing"}) + "\n" for n in ("a.png", "a.jpg", "sub/a.png")))
    assert main(["predict", str(tiny_checkpoint), "--image", str(folder), "--phrases", str(phrases),
                 "--output", str(tmp_path / "out.jsonl"), "--out", str(tmp_path / "drawn")]) == 0  # fmt: skip
    drawn = {str(p.relative_to(tmp_path / "drawn")) for p in (tmp_path / "drawn").rglob("*.png")}
    assert drawn == {"a_png_grounded.png", "a_jpg_grounded.png", "sub/a_grounded.png"}


@pytest.mark.parametrize(("line", "message"), [
    ({"image": "a.png", "text": None}, "phrases.jsonl:2: 'image' and 'text' must be strings"),
    ({"image": "a.png", "text": 7}, "phrases.jsonl:2: 'image' and 'text' must be strings"),
    ({"image": "a.png", "text": "  "}, "phrases.jsonl:2: the phrase is empty"),
    ({"image": "a.png"}, "phrases.jsonl:2: expected a JSON object with 'image' and 'text'"),
])  # fmt: skip
def test_predict_batch_bad_lines_are_named(tiny_checkpoint, tmp_path, capsys, line, message):
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "a.png")
    phrases = tmp_path / "phrases.jsonl"
    phrases.write_text(json.dumps({"image": "a.png", "text": "fine"}) + "\n" + json.dumps(line) + "\n")
    assert main(["predict", str(tiny_checkpoint), "--image", str(tmp_path), "--phrases", str(phrases)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_single_drawing_into_a_new_folder(tiny_checkpoint, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(image)
    out = tmp_path / "new" / "drawn.png"
    assert main(["predict", str(tiny_checkpoint), "--image", str(image), "--text", "a thing", "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("argv", [["eval", "CKPT", "--data-root", "d", "--dataset", "x", "--split", "val", "--batch-size", "0"],
                                  ["eval", "CKPT", "--data-root", "d", "--dataset", "x", "--split", "val",
                                   "--max-expressions", "-3"]])  # fmt: skip
def test_counts_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tiny_checkpoint, capsys):
    assert main(["predict", str(tiny_checkpoint), "--image", "x.png", "--text", "a", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "Traceback" not in err


def test_errors_from_data_loader_workers_read_as_one_line():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise ImageReadError("cannot read image data/x.png: not a supported image file")

    with pytest.raises(ImageReadError) as caught:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what the worker sends back
    assert user_message(caught.value) == "cannot read image data/x.png: not a supported image file"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty_phrase", "phrase is empty"),
        ("missing_image", "image not found"),
        ("corrupt_image", "cannot read image"),
        ("empty_image", "empty (0 bytes)"),
    ],
)
def test_predict_bad_input_is_a_clear_error(tiny_checkpoint, tmp_path, capsys, setup, message):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(image)
    text = "the thing"
    if setup == "empty_phrase":
        text = "   "
    elif setup == "missing_image":
        image = tmp_path / "nothing.png"
    elif setup == "corrupt_image":
        image.write_bytes(b"garbage")
    elif setup == "empty_image":
        image.write_bytes(b"")
    assert main(["predict", str(tiny_checkpoint), "--image", str(image), "--text", text]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_missing_checkpoint_file(tiny_checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    assert main(["predict", str(broken), "--image", "x.png", "--text", "a"]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err


def test_bench_prints_encoder_token_and_decoder_rows(tiny_checkpoint, capsys):
    assert main(["bench", str(tiny_checkpoint), "--batch-sizes", "1", "2", "--seconds", "0.05", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["batch"], r["mode"]) for r in rows} == {(b, m) for b in (1, 2) for m in ("encoder", "token", "decoder")}
    assert all(r["images_per_s"] > 0 for r in rows)


def test_export_half_precision_gives_the_same_boxes(tiny_checkpoint, synthref_root, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out), "--dtype", "float16"]) == 0
    assert "float16" in capsys.readouterr().out
    image = next((synthref_root / "images" / "synthref").rglob("*.png"))
    boxes = []
    for checkpoint in (tiny_checkpoint, out):
        assert main(["predict", str(checkpoint), "--image", str(image), "--text", "the red circle", "--json"]) == 0
        boxes.append(json.loads(capsys.readouterr().out)["box"])
    assert np.allclose(boxes[0], boxes[1], atol=1.0)


def test_drawing_names_stay_inside_the_output_folder_and_apart():
    from simvg.commands import _drawing_names

    names = _drawing_names(["/data/x.jpg", "../y.png", "a.png", "a.jpg", "a_png.png", "sub/b.png"])
    assert names == {"/data/x.jpg": "x_grounded.png", "../y.png": "y_grounded.png", "a.png": "a_png_grounded.png",
                     "a.jpg": "a_jpg_grounded.png", "a_png.png": "a_png_2_grounded.png",
                     "sub/b.png": "sub/b_grounded.png"}  # fmt: skip


def test_the_cli_puts_python_warning_format_back(tiny_checkpoint, tmp_path):
    import warnings

    before = warnings.formatwarning
    main(["predict", str(tiny_checkpoint), "--image", str(tmp_path / "missing.png"), "--text", "a"])
    assert warnings.formatwarning is before


def test_a_multi_line_worker_error_keeps_all_its_lines():
    err = ImageReadError("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                         "call last):\n  File \"x.py\", line 1, in f\n    g()\nsimvg.data.images.ImageReadError: "
                         "first line\nsecond line")  # fmt: skip
    assert user_message(err) == "first line\nsecond line"
    assert user_message(ImageReadError("plain")) == "plain"
