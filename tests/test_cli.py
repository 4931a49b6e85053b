"""The ``simvg`` command as a user runs it: synth, eval, predict (single and batch), bench, export."""

import json

import numpy as np
import pytest
from PIL import Image

from simvg.cli import main


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
    assert {"expression", "pred_box", "gt_box", "iou", "score"} <= set(rows[0])
    # Every expression of the split is counted once.
    data = json.loads((synthref_root / "annotations" / "synthref" / "instances.json").read_text())
    assert len(token_rows) == sum(len(r["expressions"]) for r in data["val"])


def test_eval_single_branch_text_output(tiny_checkpoint, synthref_root, capsys):
    args = ["eval", str(tiny_checkpoint), "--data-root", str(synthref_root), "--dataset", "synthref",
            "--split", "testB", "--branch", "token"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[token] Acc@0.5" in out and "[decoder]" not in out
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
