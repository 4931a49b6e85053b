import csv
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from simvg.cli import main
from tests.conftest import ROOT, TINY_CONFIG


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


def train(args, data_root, output):
    return main(["train", str(TINY_CONFIG), "--data-root", str(data_root), "--output", str(output), "--quiet", *args])


def test_training_writes_last_best_and_logs(synthref_root, tmp_path):
    assert train([], synthref_root, tmp_path / "run") == 0
    run = tmp_path / "run"
    for name in ("last", "best"):
        assert (run / name / "model.safetensors").is_file() and (run / name / "config.json").is_file()
    assert (run / "last" / "trainer_state.json").is_file()
    with (run / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert {"loss", "lr", "images_per_s", "loss_tok_l1", "loss_dec_giou", "dwbd_weight"} <= set(rows[0])
    with (run / "eval_log.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert {(int(r["step"]), r["branch"]) for r in evals} == {(4, "token"), (4, "decoder"), (8, "token"), (8, "decoder")}


def test_word_alignment_trains_a_head_that_is_not_saved_with_the_model(synthref_root, tmp_path):
    assert train(["--set", "loss.word_alignment=1.0"], synthref_root, tmp_path / "run") == 0
    with (tmp_path / "run" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["loss_word_alignment"]) > 0 for r in rows)
    assert not any(k.startswith("word_alignment") for k in weights(tmp_path / "run" / "last"))
    module = load_file(str(tmp_path / "run" / "last" / "training_module.safetensors"))
    assert any("word_alignment." in k for k in module)  # kept for --resume


def test_resumed_run_ends_with_the_same_weights(synthref_root, tmp_path):
    assert train([], synthref_root, tmp_path / "straight") == 0
    assert train(["--stop-after", "3"], synthref_root, tmp_path / "stopped") == 0
    assert load_file(str(tmp_path / "stopped" / "last" / "model.safetensors")).keys()
    assert train(["--resume"], synthref_root, tmp_path / "stopped") == 0
    straight, resumed = weights(tmp_path / "straight" / "last"), weights(tmp_path / "stopped" / "last")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name
    with (tmp_path / "stopped" / "train_log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 3, 4, 6, 8]


@pytest.mark.parametrize("branches,pointer", [(1, "token"), (3, "token"), (1, "words")])
def test_the_landmark_pointer_is_trained_where_phrases_name_a_landmark(synthref_root, tmp_path, branches, pointer):
    relation = ["--set", "model.head.landmark_relation=true", "--set", "loss.landmark_ref=2.0",
                "--set", f"model.head.token_branches={branches}", "--set", f"model.head.landmark_pointer={pointer}"]  # fmt: skip
    assert train(relation, synthref_root, tmp_path / "run") == 0
    with (tmp_path / "run" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(float(r["loss_landmark_ref"]) > 0 for r in rows)  # batches with a relational phrase
    saved = weights(tmp_path / "run" / "last")
    assert any(k.endswith("landmark_relation.coefficients.weight") for k in saved)
    assert (pointer == "words") == any(".landmark_relation.pointer.reader." in k for k in saved)


def test_stem_pretraining_runs_once_and_a_resumed_run_still_matches(synthref_root, tmp_path, capsys):
    pretrain = ["--set", "train.stem_pretrain_steps=3"]
    assert train(pretrain, synthref_root, tmp_path / "straight") == 0
    assert '"stem_pretrain_minutes"' in capsys.readouterr().out
    assert train([*pretrain, "--stop-after", "3"], synthref_root, tmp_path / "stopped") == 0
    capsys.readouterr()
    assert train([*pretrain, "--resume"], synthref_root, tmp_path / "stopped") == 0
    assert '"stem_pretrain_minutes"' not in capsys.readouterr().out  # the resumed run loads its stem
    straight, resumed = weights(tmp_path / "straight" / "last"), weights(tmp_path / "stopped" / "last")
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name
    assert not (straight["encoder.stem.stages.0.0.weight"] == weights_without_pretraining(synthref_root, tmp_path)).all()


def weights_without_pretraining(synthref_root, tmp_path):
    assert train([], synthref_root, tmp_path / "plain") == 0
    return weights(tmp_path / "plain" / "last")["encoder.stem.stages.0.0.weight"]


def test_existing_run_is_not_overwritten(synthref_root, tmp_path, capsys):
    assert train(["--stop-after", "1"], synthref_root, tmp_path / "run") == 0
    assert train([], synthref_root, tmp_path / "run") == 2
    assert "--resume" in capsys.readouterr().err


def test_unknown_override_key_is_named(synthref_root, tmp_path, capsys):
    assert train(["--set", "train.learning_rate=0.1"], synthref_root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "train.learning_rate" in err and "did you mean" in err


def test_torchrun_two_cpu_processes(synthref_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: a rendezvous on a free local port (a fixed port collides with other runs).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "simvg", "train", str(TINY_CONFIG), "--data-root", str(synthref_root),
           "--output", str(tmp_path / "ddp"), "--quiet", "--set", "train.max_steps=4"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "last" / "model.safetensors").is_file()
    assert '"step": 4' in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [("train.amp=float8", "train.amp"), ("train.schedule=linear", "train.schedule"), ("model.encoder.type=cnn", "encoder.type"),
     ("data.train_expression_types=[attribute", "override 'data.train_expression_types=[attribute': the value is not valid YAML"),
     ("train=3", "'train' is a section of the config"),
     ("model.encoder.pretrained=/no/such/dir", "directory not found: /no/such/dir")],
)
def test_bad_config_values_are_named(synthref_root, tmp_path, capsys, override, message):
    assert train(["--set", override], synthref_root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_section_can_be_set_as_a_mapping():
    from simvg.config import load_config

    config = load_config(TINY_CONFIG, ["data.augment={flip: 0.5, crop: false}"])
    assert config.data.augment.flip == 0.5 and config.data.augment.crop is False


def test_tensorboard_logging_without_the_package_is_named_before_training(synthref_root, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    assert train(["--set", "train.tensorboard=true"], synthref_root, tmp_path / "run") == 2
    assert "pip install 'simvg[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last").exists()


def corrupt_png_data(path) -> None:
    """Break the PNG's compressed pixels but keep every chunk's checksum right: only decoding
    the image finds it."""
    import struct
    import zlib

    data, out, pos = path.read_bytes(), bytearray(path.read_bytes()[:8]), 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = bytearray(data[pos + 8 : pos + 8 + length])
        if kind == b"IDAT":
            body[2:] = b"\xff" * 8 + bytes(len(body) - 10)  # the zlib header kept, its stream broken
        out += struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + length
    path.write_bytes(bytes(out))


def test_unreadable_training_images_are_named_before_training(synthref_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthref_root, root)
    broken = sorted((root / "images" / "synthref" / "train").glob("*.png"))[-1]
    broken.write_bytes(b"garbage")
    assert train([], root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"cannot read image {broken}: not a supported image file" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last").exists()  # stopped before the first step


def test_a_bad_training_image_read_by_a_worker_is_one_clear_line(synthref_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthref_root, root)
    for image in (root / "images" / "synthref" / "train").glob("*.png"):
        corrupt_png_data(image)  # passes the up-front check; found when a worker decodes it
    assert train(["--set", "data.num_workers=1", "--set", "train.stem_pretrain_steps=0"], root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "corrupt or truncated" in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_filtering_expression_types_keeps_each_phrases_landmark(synthref_root):
    from simvg.data.readers import load_records
    from simvg.engine.tasks import filter_expression_types

    records = [r for r in load_records(synthref_root, "synthref", "train") if len(set(r.expression_types)) > 1]
    relational = [r for r in records if "relation" in r.expression_types]
    assert relational, "the tiny split has records mixing relational and other phrases"
    kept = filter_expression_types(relational, ["relation"])
    for before, after in zip(relational, kept):
        landmarks = [before.landmark_box(i) for i, t in enumerate(before.expression_types) if t == "relation"]
        assert [after.landmark_box(i) for i in range(len(after.expressions))] == landmarks
    others = filter_expression_types(records, ["attribute", "location"])
    assert all(r.landmark_box(i) is None for r in others for i in range(len(r.expressions)))


def meta(directory):
    import json

    return json.loads((directory / "config.json").read_text())


def test_ema_weights_are_validated_saved_and_resumed_exactly(synthref_root, tmp_path):
    ema = ["--set", "train.ema=0.9"]
    assert train(ema, synthref_root, tmp_path / "straight") == 0
    last, best = tmp_path / "straight" / "last", tmp_path / "straight" / "best"
    assert meta(last)["weights"] == "ema" and meta(best)["weights"] == "ema"
    averaged = weights(last)
    trained = {k.removeprefix("model."): v for k, v in load_file(str(last / "training_module.safetensors")).items()}
    floats = [k for k, v in averaged.items() if v.is_floating_point()]
    assert any(not (averaged[k] == trained[k]).all() for k in floats)  # model.safetensors is not the trained copy
    # Stopped and resumed: the same average and the same trained weights as a straight run.
    assert train([*ema, "--stop-after", "3"], synthref_root, tmp_path / "stopped") == 0
    assert train([*ema, "--resume"], synthref_root, tmp_path / "stopped") == 0
    for name in ("model.safetensors", "training_module.safetensors"):
        straight = load_file(str(last / name))
        resumed = load_file(str(tmp_path / "stopped" / "last" / name))
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert (straight[key] == resumed[key]).all(), (name, key)


def test_without_ema_the_checkpoint_holds_the_trained_weights(tiny_run):
    last = tiny_run / "last"
    assert meta(last)["weights"] == "trained"
    trained = {k.removeprefix("model."): v for k, v in load_file(str(last / "training_module.safetensors")).items()}
    saved = weights(last)
    assert all((saved[k] == trained[k]).all() for k in saved)


def test_load_from_starts_from_the_weights_not_the_step(tiny_run, synthref_root, tmp_path):
    # With a zero learning rate the parameters stay those loaded (BatchNorm statistics move on);
    # the run counts its own steps.
    source = tiny_run / "last"
    args = ["--set", f"train.load_from={source}", "--set", "train.lr=0.0", "--set", "train.max_steps=2"]
    assert train(args, synthref_root, tmp_path / "run") == 0
    loaded, start = weights(tmp_path / "run" / "last"), weights(source)
    assert loaded.keys() == start.keys()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert all((loaded[k] == start[k]).all() for k in start if not k.endswith(statistics))
    assert meta(tmp_path / "run" / "last")["step"] == 2
    with (tmp_path / "run" / "train_log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2]


def test_load_from_a_checkpoint_of_another_shape_lists_the_mismatches(tiny_run, synthref_root, tmp_path, capsys):
    args = ["--set", f"train.load_from={tiny_run / 'last'}", "--set", "model.head.tqg_ffn=48"]
    assert train(args, synthref_root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "another shape" in err and "query_generator" in err and "(64, 32) vs the model's (48, 32)" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "last").exists()


def test_load_from_fresh_starts_a_model_with_more_queries_from_a_one_query_checkpoint(tiny_run, synthref_root, tmp_path,
                                                                                   capsys):  # fmt: skip
    source = tiny_run / "last"
    args = ["--set", f"train.load_from={source}", "--set", "train.lr=0.0", "--set", "train.max_steps=1",
            "--set", "model.head.num_queries=3"]  # fmt: skip
    assert train(args, synthref_root, tmp_path / "refused") == 2
    assert "train.load_from_fresh" in capsys.readouterr().err
    misspelt = args + ["--set", "train.load_from_fresh=[query_generator.query_embedding]"]
    assert train(misspelt, synthref_root, tmp_path / "misspelt") == 2
    assert "names no weight of the model or of" in (err := capsys.readouterr().err) and "query_embedding" in err
    # Several queries: every cell of the token branch scores itself (score_head instead of class_head).
    fresh_names = ["query_generator.query_embed", "token_head.class_head", "token_head.score_head",
                   "token_head.pointer_gain", "token_head.presence_head"]  # fmt: skip
    fresh = args + ["--set", f"train.load_from_fresh=[{','.join(fresh_names)}]"]
    assert train(fresh, synthref_root, tmp_path / "run") == 0
    loaded, start = weights(tmp_path / "run" / "last"), weights(source)
    assert loaded["query_generator.query_embed.weight"].shape[0] == 3 and "token_head.class_head.weight" not in loaded
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    copied = [k for k in start if not k.endswith(statistics) and not k.startswith(tuple(fresh_names))]
    assert copied and all((loaded[k] == start[k]).all() for k in copied)


def test_adam_with_amsgrad_keeps_its_state_in_the_checkpoint(synthref_root, tmp_path):
    args = ["--set", "train.optimizer=adam", "--set", "train.amsgrad=true", "--set", "train.max_steps=2"]
    assert train(args, synthref_root, tmp_path / "run") == 0
    state = load_file(str(tmp_path / "run" / "last" / "optimizer.safetensors"))
    assert any(k.endswith(".max_exp_avg_sq") for k in state)
    groups = meta_state(tmp_path / "run" / "last")["param_groups"]
    assert all(g["amsgrad"] for g in groups)


def meta_state(directory):
    import json

    return json.loads((directory / "trainer_state.json").read_text())


def test_best_checkpoint_by_the_mean_of_both_branches(synthref_root, tmp_path):
    assert train(["--set", "train.best_metric=mean"], synthref_root, tmp_path / "run") == 0
    best = meta(tmp_path / "run" / "best")
    val = best["val_metrics"]
    assert best["best_metric"]["rule"] == "mean"
    assert best["best_metric"]["value"] == pytest.approx((val["token"]["acc@0.5"] + val["decoder"]["acc@0.5"]) / 2)
    assert "official_acc@0.5" in val["token"] and val["token"]["official_batch_size"] == 16
    with (tmp_path / "run" / "eval_log.csv").open() as f:
        assert "official_acc@0.5" in next(csv.DictReader(f))


DECODER_ONLY = ["--set", "loss.lambda_token=0", "--set", "loss.lambda_kd=0", "--set", "loss.token_ref=0"]


def test_decoder_branch_only_leaves_the_token_branch_as_it_started(synthref_root, tmp_path):
    assert train([*DECODER_ONLY, "--set", "train.best_metric=decoder"], synthref_root, tmp_path / "run") == 0
    assert train(["--set", "train.lr=0.0", "--set", "train.max_steps=1"], synthref_root, tmp_path / "init") == 0
    trained, start = weights(tmp_path / "run" / "last"), weights(tmp_path / "init" / "last")
    token = [k for k in start if k.startswith(("token_head.", "object_proj."))]
    assert token and all((trained[k] == start[k]).all() for k in token)
    assert any(not (trained[k] == start[k]).all() for k in start if k.startswith("decoder_branch."))
    assert meta(tmp_path / "run" / "best")["best_metric"]["rule"] == "decoder"


def test_decoder_branch_only_cannot_pick_the_best_checkpoint_by_the_token_branch(synthref_root, tmp_path, capsys):
    assert train(DECODER_ONLY, synthref_root, tmp_path / "run") == 2
    assert "train.best_metric" in capsys.readouterr().err


def test_two_stages_the_second_from_the_firsts_best(synthref_root, tmp_path):
    stage1 = [*DECODER_ONLY, "--set", "train.best_metric=decoder", "--set", "train.ema=0.999"]
    assert train(stage1, synthref_root, tmp_path / "stage1") == 0
    best = tmp_path / "stage1" / "best"
    stage2 = ["--set", f"train.load_from={best}", "--set", "train.best_metric=mean", "--set", "train.max_steps=4"]
    assert train(stage2, synthref_root, tmp_path / "stage2") == 0
    first, second = weights(best), weights(tmp_path / "stage2" / "last")
    assert first.keys() == second.keys()
    # The token branch, untouched in stage 1, learns in stage 2.
    token = [k for k in first if k.startswith("token_head.")]
    assert any(not (first[k] == second[k]).all() for k in token)
