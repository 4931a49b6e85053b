"""ONNX export (``simvg export --format onnx``) and the onnxruntime backend of Grounder.

The property a user relies on: the exported graph grounds every phrase where the torch model
does (boxes within 1 px of the original image, same scores), at any batch size and phrase
length, with the same pre- and post-processing.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from simvg import Grounder
from simvg.cli import main
from simvg.config import load_config
from simvg.engine.checkpoint import CheckpointError, save_checkpoint
from simvg.models import build_model
from simvg.models.pretrained import load_tokenizer
from simvg.onnx_backend import ONNX_OPSET
from simvg.weights import DEFAULT_MODEL_DIR
from tests.conftest import TINY_CONFIG

PHRASES = ["the red circle", "the big blue square left of the small green triangle", "star"]


def images() -> list[np.ndarray]:
    """Three images of different shapes (so different letterbox padding)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((90, 160, 3), (200, 120, 3), (64, 64, 3))]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model with every part the shipped one has (landmark relation with the words
    pointer's GRU) and a decoder branch, its weights randomised so every part matters."""
    config = load_config(TINY_CONFIG)
    config.model.head.landmark_relation, config.model.head.landmark_pointer = True, "words"
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer)).eval()
    with torch.no_grad():  # zero-initialised parts (relation coefficients, last box layer) get weights too
        for name, parameter in model.named_parameters():
            if "coefficients" in name or "box_head.layers.2" in name:
                parameter.normal_(0.0, 0.5)
    directory = tmp_path_factory.mktemp("onnx") / "tiny"
    save_checkpoint(directory, model, config, model.encoder.backbone_config(), tokenizer)
    return directory


@pytest.fixture(scope="module")
def tiny_export_run(tiny_checkpoint, tmp_path_factory):
    """The tiny model exported with both branches and int8: (directory, what the CLI printed)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny_onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(tiny_checkpoint), str(out), "--format", "onnx", "--decoder", "--int8"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def tiny_export(tiny_export_run):
    return tiny_export_run[0]


@pytest.fixture(scope="module")
def student_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "student_onnx"
    assert main(["export", str(DEFAULT_MODEL_DIR), str(out), "--format", "onnx"]) == 0
    return out


def assert_same_results(expected, got, image_sizes=None) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert a.text == b.text and a.branch == b.branch
        assert np.abs(np.subtract(a.box, b.box)).max() <= 1.0, (a, b)
        assert abs(a.score - b.score) <= 1e-3


def test_the_export_holds_config_tokenizer_and_a_graph_of_the_stated_opset(tiny_export, capsys):
    names = sorted(p.name for p in tiny_export.iterdir())
    assert names == ["config.json", "model.int8.onnx", "model.onnx", "tokenizer.json", "tokenizer_config.json"]
    graph = onnx.load(str(tiny_export / "model.onnx"))
    onnx.checker.check_model(graph)
    assert {o.domain: o.version for o in graph.opset_import}[""] == ONNX_OPSET
    assert {p.key: p.value for p in graph.metadata_props}["opset"] == str(ONNX_OPSET)
    assert json.loads((tiny_export / "config.json").read_text())["onnx"]["opset"] == ONNX_OPSET
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert isinstance(dims["input_ids"][0], str) and isinstance(dims["input_ids"][1], str)  # dynamic batch, length
    assert dims["images"][0] == dims["input_ids"][0] and dims["images"][1:] == [3, 64, 64]


def test_the_cli_states_the_opset(tiny_export_run):
    assert f"opset {ONNX_OPSET}" in tiny_export_run[1] and "largest difference" in tiny_export_run[1]


def test_tiny_onnx_boxes_match_torch_at_batch_1_and_3(tiny_checkpoint, tiny_export):
    torch_grounder = Grounder.from_pretrained(tiny_checkpoint, device="cpu")
    onnx_grounder = Grounder.from_pretrained(tiny_export)  # the backend follows the directory
    assert onnx_grounder.backend == "onnxruntime" and onnx_grounder.branches == ("token", "decoder")
    pictures = images()
    for branch in ("token", "decoder"):
        assert_same_results([torch_grounder.predict(pictures[0], PHRASES[1], branch=branch)],
                            [onnx_grounder.predict(pictures[0], PHRASES[1], branch=branch)])  # fmt: skip
        # Batch 3: three phrases of different lengths, in one image and in three images.
        assert_same_results(torch_grounder.predict(pictures[0], PHRASES, branch=branch),
                            onnx_grounder.predict(pictures[0], PHRASES, branch=branch))  # fmt: skip
        assert_same_results(torch_grounder.predict(pictures, PHRASES, branch=branch),
                            onnx_grounder.predict(pictures, PHRASES, branch=branch))  # fmt: skip


def test_shipped_student_onnx_boxes_match_torch(student_export):
    torch_grounder = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    onnx_grounder = Grounder.from_pretrained(student_export, backend="onnxruntime")
    assert onnx_grounder.branches == ("token",)
    example = Image.open(sorted((DEFAULT_MODEL_DIR.parents[2] / "examples").glob("*.png"))[0])
    pictures = [example, *images()[1:]]
    assert_same_results([torch_grounder.predict(example, PHRASES[0])], [onnx_grounder.predict(example, PHRASES[0])])
    assert_same_results(torch_grounder.predict(pictures, PHRASES), onnx_grounder.predict(pictures, PHRASES))


def test_int8_graph_has_int8_weights_and_grounds_in_the_image(tiny_export):
    graph = onnx.load(str(tiny_export / "model.int8.onnx"))
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.graph.initializer)
    grounder = Grounder.from_pretrained(tiny_export, quantize="int8")
    assert grounder.quantization == "int8"
    for result in grounder.predict(images()[0], PHRASES, branch="decoder"):
        x0, y0, x1, y1 = result.box
        assert 0 <= x0 <= x1 <= 160 and 0 <= y0 <= y1 <= 90 and 0 <= result.score <= 1


def test_eval_runs_on_an_onnx_export_as_on_torch(tiny_checkpoint, tiny_export, synthref_root, capsys):
    reports = []
    for checkpoint in (tiny_checkpoint, tiny_export):
        args = ["eval", str(checkpoint), "--data-root", str(synthref_root), "--dataset", "synthref", "--split", "val",
                "--branch", "both", "--json"]  # fmt: skip
        assert main(args) == 0
        reports.append(json.loads(capsys.readouterr().out)["metrics"])
    for branch in ("token", "decoder"):
        assert reports[0][branch]["count"] == reports[1][branch]["count"]
        assert abs(reports[0][branch]["miou"] - reports[1][branch]["miou"]) < 0.5


def test_onnx_export_errors_are_clear(tiny_checkpoint, tiny_export, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "a"), "--format", "onnx", "--dtype", "float16"]) == 2
    assert "--dtype applies to --format safetensors" in capsys.readouterr().err
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "b"), "--int8"]) == 2
    assert "apply to --format onnx" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "notes"), "--format", "onnx"]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert main(["export", str(tiny_export), str(tmp_path / "c"), "--format", "onnx"]) == 2
    assert "is an ONNX export already" in capsys.readouterr().err
    assert main(["bench", str(tiny_export)]) == 2
    assert "bench/deploy_speed.py" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="ONNX export"):
        Grounder.from_pretrained(tiny_export, backend="torch")
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        Grounder.from_pretrained(tiny_export, backend="tf")
    grounder = Grounder.from_pretrained(tiny_export)
    with pytest.raises(ValueError, match="save_pretrained needs the torch checkpoint"):
        grounder.save_pretrained(tmp_path / "copy")


def test_exporting_again_replaces_the_graph(tiny_checkpoint, tiny_export, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(tiny_export, out)
    (out / "predictions.jsonl").write_text("a user's file")
    assert main(["export", str(tiny_checkpoint), str(out), "--format", "onnx"]) == 0
    assert (out / "predictions.jsonl").read_text() == "a user's file"
    assert not (out / "model.int8.onnx").exists() and (out / "model.onnx").is_file()
    with pytest.raises(FileNotFoundError, match="export with --int8"):
        Grounder.from_pretrained(out, quantize="int8")
    with pytest.raises(ValueError, match="exported without the decoder"):
        Grounder.from_pretrained(out).model(*[torch.zeros(1)] * 4, use_decoder=True)


def test_a_model_without_decoder_exports_without_it(tmp_path, capsys):
    config = load_config(TINY_CONFIG)
    config.model.head.use_decoder = False
    tokenizer = load_tokenizer("minilm-l6")
    model = build_model(config.model, len(tokenizer))
    save_checkpoint(tmp_path / "ckpt", model, config, model.encoder.backbone_config(), tokenizer)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--format", "onnx", "--decoder"]) == 2
    assert "has no decoder branch" in capsys.readouterr().err


def test_the_app_serves_an_onnx_export(tiny_export):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("simvg_app", Path(__file__).resolve().parents[1] / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    cache = app.ModelCache({"tiny (onnx)": tiny_export})
    assert cache.get("tiny (onnx)").backend == "onnxruntime"
    path = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.png"))[0]
    _, payload = app.ground(str(path), "the red circle\nthe star", "tiny (onnx)", "token", cache)
    assert len(payload["boxes"]) == 2
