"""Every recipe in configs/ loads with strict key checking, as `simvg train`/`distill` read it."""

from pathlib import Path

import pytest
import torch
import yaml

from simvg.benchmark import synthetic_inputs
from simvg.config import load_config
from simvg.models import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_documented_recipes_exist():
    names = {p.name for p in CONFIGS}
    assert {"synthref_tiny.yaml", "synthref_hybrid.yaml", "refcoco_vilt.yaml", "distill_synthref.yaml"} <= names
    assert any("distill" in n and "tiny" in n for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_loads(path):
    config = load_config(path)
    assert config.train.max_steps > 0 and config.train.batch_size >= 1


def test_refcoco_recipe_is_simvg_schedule_on_vilt():
    config = load_config(next(p for p in CONFIGS if p.name == "refcoco_vilt.yaml"))
    assert config.model.encoder.type == "vilt" and config.model.image_size == 384
    assert config.data.dataset == "refcoco-unc"
    assert config.train.lr == pytest.approx(5e-4) and config.train.encoder_lr_mult == pytest.approx(0.1)
    assert config.train.schedule == "step" and config.train.grad_clip == pytest.approx(0.15)
    assert config.model.resize == "stretch" and config.data.augment.mode == "lsj" and config.data.augment.flip == 0
    assert config.train.optimizer == "adam" and config.train.amsgrad and config.train.best_metric == "mean"


def test_refcoco_recipe_builds_and_runs_as_configured():
    # The recipe's own choices (ViLT at 384 px, its attention kernel, its head); a small random
    # transformer stands in for the hub's ViLT-B/32, which this machine cannot download.
    small = ["model.encoder.pretrained=null", "model.encoder.hidden_size=32", "model.encoder.num_layers=1",
             "model.encoder.num_heads=2", "model.encoder.intermediate_size=64"]  # fmt: skip
    config = load_config(next(p for p in CONFIGS if p.name == "refcoco_vilt.yaml"), small)
    model = build_model(config.model, vocab_size=30522).eval()
    with torch.no_grad():
        out = model(*synthetic_inputs(config, 1))
    assert out["token"]["boxes"].shape == (1, 4) and out["decoder"]["boxes"].shape == (1, 1, 4)


def simvg_recipe(name: str) -> dict:
    """The training side of a SimVG recipe (data, loss, train), read with our strict checks;
    the model side needs the BEiT-3 encoder and SimVG's head type."""
    from simvg.config import DataConfig, LossConfig, TrainConfig, from_dict

    data = yaml.safe_load(next(p for p in CONFIGS if p.name == name).read_text())
    sections = {"data": DataConfig, "loss": LossConfig, "train": TrainConfig}
    return {key: from_dict(kind, data[key], key) for key, kind in sections.items()} | {"model": data["model"]}


EPOCH = 1326  # steps of 32 over RefCOCO (UNC) train's 42,404 referred objects


@pytest.mark.parametrize("name", ["refcoco_beit3_base.yaml", "refcoco_beit3_large.yaml",
                                  "refcoco_beit3_base_twostage_1.yaml", "refcoco_beit3_base_twostage_2.yaml"])  # fmt: skip
def test_simvg_recipes_follow_the_official_schedule(name):
    recipe = simvg_recipe(name)
    train, loss, data, model = recipe["train"], recipe["loss"], recipe["data"], recipe["model"]
    assert (train.optimizer, train.amsgrad, train.betas, train.eps, train.weight_decay) == ("adam", True, [0.9, 0.98], 1e-9, 0.0)
    assert (train.batch_size, train.encoder_lr_mult, train.grad_clip, train.schedule) == (32, 0.1, 0.15, "step")
    assert train.warmup_steps == 3 * EPOCH and train.eval_every == EPOCH
    epochs, decay_epoch, lr = (20, 15, 3e-4) if name.endswith("_2.yaml") else (30, 25, 5e-4)
    assert train.max_steps == epochs * EPOCH and train.lr == pytest.approx(lr)
    # SimVG's scheduler: x0.1 once epoch + 1 >= the decay epoch (epochs counted from 0).
    assert train.step_milestones[0] * train.max_steps == pytest.approx((decay_epoch - 1) * EPOCH)
    assert (data.augment.mode, data.augment.scale, data.augment.flip) == ("lsj", [0.3, 1.4], 0.0)
    assert model["resize"] == "stretch" and model["image_size"] == 640 and model["max_text_length"] == 20
    assert model["encoder"]["type"] == "beit3" and model["encoder"]["pixel_normalization"] == "imagenet"
    assert (model["encoder"]["dropout"], model["encoder"]["drop_path"], model["encoder"]["patch_size"]) == (0.0, 0.1, 32)
    assert model["head"]["type"] == "simvg" and model["encoder"]["preset"] == ("large" if "large" in name else "base")
    weights = (1.0, 0.4) if "large" in name else (0.0, 0.0) if name.endswith("_1.yaml") else (2.0, 1.0)
    assert (loss.lambda_token, loss.lambda_kd) == weights
    if name.endswith("_1.yaml"):
        from simvg.engine.tasks import token_branch_trained

        assert train.ema == 0.999 and not token_branch_trained(loss) and train.best_metric == "decoder"
    else:
        assert not train.ema and train.best_metric == "mean"
    assert bool(train.load_from) == name.endswith("_2.yaml")


@pytest.mark.parametrize(("name", "sizes"), [
    ("refcoco_beit3_base.yaml", dict(encoder_embed_dim=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_embed_dim=3072)),
    ("refcoco_beit3_large.yaml", dict(encoder_embed_dim=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_embed_dim=4096)),
])  # fmt: skip
def test_simvg_recipes_build_at_their_real_sizes(name, sizes):
    # The recipe's model at its published size, random weights, on the meta device (no memory):
    # the encoder holds exactly the parameters of torchscale's BEiT-3 of that size at SimVG's
    # 640 px with 32-px patches, and SimVG's head answers as the paper's.
    import warnings

    from tests.models.test_beit3 import torchscale_beit3

    config = load_config(next(p for p in CONFIGS if p.name == name), ["model.encoder.pretrained=null"])
    with torch.device("meta"):
        model = build_model(config.model, vocab_size=64010)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's moved-module warning, from torchscale's import
            reference = torchscale_beit3(img_size=640, patch_size=32, vocab_size=64010, **sizes)
    ours = {k: v.shape for k, v in model.encoder.beit3.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}
    assert type(model.head.token_branch).__name__ == "SimVGTokenBranch"  # the paper's head


def test_the_synthref_g_teacher_recipe_is_the_default_teacher_answering_with_sets():
    # docs/generalized-grounding.md measures this recipe; it must stay the default teacher's
    # recipe plus what answering with sets needs, so that a change to one is a change to both.
    import dataclasses

    def flat(config, prefix=""):
        items = config.items() if isinstance(config, dict) else dataclasses.asdict(config).items()
        out = {}
        for key, value in items:
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return out

    teacher = flat(load_config(next(p for p in CONFIGS if p.name == "synthref_hybrid.yaml")))
    sets = flat(load_config(next(p for p in CONFIGS if p.name == "synthref_g_teacher.yaml")))
    changed = {k: sets[k] for k in sets if sets[k] != teacher[k]}
    assert changed == {
        "data.dataset": "synthref-g", "model.head.num_queries": 10, "model.head.answer_nms": 0.5,
        "model.head.answer_merge": "sum", "loss.score_target": "hit", "loss.cell_ignore_iou": 0.5,
        "model.head.presence_trains_encoder": True, "loss.cells_given_presence": True,
        "model.head.presence_geometry": True,
        "train.max_steps": 1400, "train.eval_every": 700, "train.save_every": 700,
    }  # fmt: skip
