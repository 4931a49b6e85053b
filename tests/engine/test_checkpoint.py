import json
import os
import pickle
import stat

import pytest
import torch

from simvg.config import Config, load_config
from simvg.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    write_atomically,
)
from simvg.inference import Grounder
from simvg.models import build_model
from simvg.models.pretrained import load_tokenizer
from tests.conftest import TINY_CONFIG


def tiny_model() -> tuple:
    config = load_config(TINY_CONFIG)
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer))
    return model, tokenizer, config


def save_tiny(directory) -> tuple:
    model, tokenizer, config = tiny_model()
    save_checkpoint(directory, model, config, model.encoder.backbone_config(), tokenizer, extra={"note": "x"})
    return model, config


def test_round_trip_gives_identical_predictions(tmp_path):
    model, _ = save_tiny(tmp_path / "ckpt")
    loaded, tokenizer, config, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["note"] == "x" and isinstance(config, Config)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip


def test_checkpoints_with_the_retired_pointer_biases_still_load(tmp_path):
    # The words landmark pointer once had a selection bias and a key bias, and the token branch
    # a key bias, none of which could change any output (constants before a softmax); older
    # checkpoints carry them.
    from safetensors.torch import load_file, save_file

    config = load_config(TINY_CONFIG)
    config.model.head.landmark_relation, config.model.head.landmark_pointer = True, "words"
    tokenizer = load_tokenizer("minilm-l6")
    model = build_model(config.model, len(tokenizer))
    save_checkpoint(tmp_path / "ckpt", model, config, model.encoder.backbone_config(), tokenizer)
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    prefix = "token_head.landmark_relation.pointer"
    weights[f"{prefix}.select.bias"], weights[f"{prefix}.key.bias"] = torch.ones(1), torch.ones(256)
    weights["token_head.key.bias"] = torch.ones(model.token_head.key.out_features)
    save_file(weights, tmp_path / "ckpt" / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "ckpt")[0]
    assert f"{prefix}.select.bias" not in loaded.state_dict() and "token_head.key.bias" not in loaded.state_dict()
    with pytest.raises(CheckpointError, match="does not match"):  # any other extra key is still an error
        weights["token_head.unknown"] = torch.ones(1)
        save_file(weights, tmp_path / "ckpt" / "model.safetensors")
        load_checkpoint(tmp_path / "ckpt")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_tiny(tmp_path / "ckpt")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    Grounder.from_pretrained(tmp_path / "ckpt", device="cpu")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_missing_file_is_named(tmp_path, missing):
    save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt" / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("model.safetensors", b"", "model.safetensors is not a readable safetensors file"),
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"", "model.safetensors is not a readable"),
    ("tokenizer.json", b"not json", "cannot read its tokenizer files"),
])  # fmt: skip
def test_unreadable_files_are_named(tmp_path, name, content, message):
    save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt")


def test_checkpoints_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        save_tiny(tmp_path / "ckpt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755  # not mkdtemp's private 0o700
    assert stat.S_IMODE((tmp_path / "ckpt" / "model.safetensors").stat().st_mode) == 0o644


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere")
    save_tiny(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["model"]["head"]["hidden_dim"] = 48  # weights no longer fit
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "ckpt")
    meta["config"]["model"]["head"]["hiden_dim"] = 48
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="hiden_dim"):
        load_checkpoint(tmp_path / "ckpt")


def test_atomic_write_keeps_the_old_checkpoint_on_failure(tmp_path):
    save_tiny(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def broken(directory):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "ckpt", broken)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left


def test_interrupted_swap_falls_back_to_the_old_copy(tmp_path):
    save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.old")  # crash between the two renames
    assert resolve_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt.old"
    load_checkpoint(tmp_path / "ckpt")


def test_saving_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds files but no checkpoint"):
        save_tiny(victim)
    assert (victim / "notes.txt").read_text() == "mine" and (victim / "sub").is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_tiny(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    save_tiny(tmp_path / "empty")  # an empty directory is fine
    save_tiny(tmp_path / "empty")  # and so is replacing a checkpoint
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_a_users_files_in_a_checkpoint_survive_its_next_save(tmp_path):
    save_tiny(tmp_path / "best")
    (tmp_path / "best" / "preds.jsonl").write_text("mine")
    (tmp_path / "best" / ".git").mkdir()
    save_tiny(tmp_path / "best")
    assert (tmp_path / "best" / "preds.jsonl").read_text() == "mine" and (tmp_path / "best" / ".git").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_failed_save_gives_the_users_files_back(tmp_path):
    save_tiny(tmp_path / "best")
    (tmp_path / "best" / "preds.jsonl").write_text("mine")

    def broken(directory):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "best", broken)
    assert (tmp_path / "best" / "preds.jsonl").read_text() == "mine"


def test_saving_through_a_link_to_a_checkpoint_directory(tmp_path):
    save_tiny(tmp_path / "v3")
    (tmp_path / "current").symlink_to(tmp_path / "v3", target_is_directory=True)
    save_tiny(tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / "model.safetensors").is_file()


def test_a_training_runs_module_state_is_saved_in_the_same_atomic_step(tmp_path):
    from safetensors.torch import load_file

    model, tokenizer, config = tiny_model()
    state = {"head.weight": torch.ones(2, 3)}
    save_checkpoint(tmp_path / "last", model, config, model.encoder.backbone_config(), tokenizer,
                    tensor_files={"training_module.safetensors": state})  # fmt: skip
    assert torch.equal(load_file(str(tmp_path / "last" / "training_module.safetensors"))["head.weight"], state["head.weight"])
    # The next save writes its own copy, never keeping the previous one's.
    save_checkpoint(tmp_path / "last", model, config, model.encoder.backbone_config(), tokenizer,
                    tensor_files={"training_module.safetensors": {"head.weight": torch.zeros(2, 3)}})  # fmt: skip
    assert load_file(str(tmp_path / "last" / "training_module.safetensors"))["head.weight"].sum() == 0
    # A checkpoint saved without training state over one with it keeps none of the old one's.
    save_tiny(tmp_path / "last")
    assert not (tmp_path / "last" / "training_module.safetensors").exists()


def test_a_checkpoint_records_the_pretrained_alias_not_where_the_package_is(tmp_path):
    # A model built from the "minilm-l6" alias reads its weights from the installed package's
    # folder, and Hugging Face's config remembers that folder; the checkpoint must not.
    from simvg.models.pretrained import minilm_directory

    config = load_config(TINY_CONFIG, ["model.encoder.pretrained=minilm-l6", "model.encoder.layers=[0]"])
    tokenizer = load_tokenizer("minilm-l6")
    model = build_model(config.model, len(tokenizer))
    assert str(minilm_directory()) in json.dumps(model.encoder.backbone_config())  # what Hugging Face keeps
    save_checkpoint(tmp_path / "ckpt", model, config, model.encoder.backbone_config(), tokenizer)
    package = str(minilm_directory().parent.parent)  # the site-packages folder
    for path in (tmp_path / "ckpt").iterdir():
        assert package.encode() not in path.read_bytes(), path.name
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["backbone_config"]["_name_or_path"] == "minilm-l6"
    loaded = load_checkpoint(tmp_path / "ckpt")[0]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_an_exported_copy_names_its_teachers_without_absolute_paths(tmp_path, monkeypatch):
    from simvg.engine.checkpoint import shareable_path

    monkeypatch.chdir(tmp_path)
    assert shareable_path(str(tmp_path / "runs" / "teacher" / "best")) == "runs/teacher/best"
    assert shareable_path("/elsewhere/runs/teacher/best") == "teacher/best"
    assert shareable_path("runs/teacher/best") == "runs/teacher/best"
