"""``simvg import-official``: SimVG's released files, read without running anything in them."""

import os

import numpy as np
import pytest
import torch

from simvg.engine.import_official import (
    OfficialImportError,
    map_official_state,
    official_config,
    official_weights,
)
from simvg.engine.torch_files import TorchFileError, load_torch_file
from tests.models.test_beit3 import train_sentencepiece
from tests.official_simvg import official_beit3_layout, official_head_layout, random_state

# A tiny BEiT-3 SimVG: width 64 (one 64-wide head), 2 layers, patch 32 at 64 px (2 x 2 patches).
TINY = dict(width=64, layers=2, ffn=96, vocab=120, patch=32, image=64)


def official_state(queries: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    layout = official_beit3_layout(**TINY) | official_head_layout(TINY["width"], 32, queries, 2, 16, 3, 48)
    return random_state(layout, seed)


class Malicious:
    """Pickles as a call of os.system (what a hostile checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_file_that_asks_to_run_code_is_refused_by_name_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": Malicious(marker)}, path,
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    with pytest.raises(TorchFileError, match=r"evil\.pth: refused to load.*'(posix|nt)\.system'.*nothing in the file is executed"):
        load_torch_file(path)
    assert not marker.exists()


def test_tensors_containers_numbers_and_strings_are_read(tmp_path):
    path = tmp_path / "release.pth"
    data = {"state_dict": {"a": torch.arange(3.0)}, "epoch": 29, "lr": 5e-5, "d_acc": np.float64(90.5),
            "meta": {"config": "model = dict(...)", "steps": [1, 2]}, "optimizer": {"state": {0: {"step": torch.tensor(3)}}}}  # fmt: skip
    torch.save(data, path)
    loaded = load_torch_file(path)
    assert torch.equal(loaded["state_dict"]["a"], torch.arange(3.0)) and float(loaded["d_acc"]) == 90.5
    assert loaded["meta"]["steps"] == [1, 2]
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(TorchFileError, match=r"junk\.pth: (refused to load|not a readable torch file)"):
        load_torch_file(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_torch_file(tmp_path / "nope.pth")


def test_the_beit3_layout_is_torchscales():
    """The fixture's encoder keys and shapes are those of torchscale's BEiT3 (SimVG's encoder)."""
    pytest.importorskip("torchscale")
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    args = EncoderConfig(img_size=TINY["image"], patch_size=TINY["patch"], vocab_size=TINY["vocab"], multiway=True,
                         layernorm_embedding=False, normalize_output=True, no_output_layer=True,
                         encoder_embed_dim=TINY["width"], encoder_attention_heads=1, encoder_ffn_embed_dim=TINY["ffn"],
                         encoder_layers=TINY["layers"])  # fmt: skip
    reference = {f"vis_enc.beit3.{k}": tuple(v.shape) for k, v in BEiT3(args).state_dict().items()}
    assert {k: shape for k, (shape, _) in official_beit3_layout(**TINY).items()} == reference


def test_every_official_key_has_its_place():
    state = official_state()
    mapped = map_official_state(state)
    encoder = {k for k in state if k.startswith("vis_enc.")}
    assert {k for k in mapped if k.startswith("encoder.")} == {"encoder." + k[len("vis_enc.") :] for k in encoder}
    assert mapped["encoder.beit3.encoder.layers.0.ffn.A.fc1.weight"] is state["vis_enc.beit3.encoder.layers.0.ffn.A.fc1.weight"]
    assert mapped["head.visual_proj.weight"].shape == (32, 64)  # the 1 x 1 convolution's kernel, flattened
    assert "head.criterion.empty_weight" in state and not any("criterion" in k for k in mapped)
    assert mapped["head.decoder_branch.decoder.layers.2.cross_attn.in_proj_weight"] is \
        state["head.transformer.decoder.layers.2.attentions.1.attn.in_proj_weight"]


def test_keys_without_a_place_are_listed():
    state = official_state()
    state["head.transformer.encoder.layers.0.norms.0.weight"] = torch.ones(32)  # a DETR encoder the paper's head has not
    state["head.mlp.layers.1.weight"] = torch.ones(32, 32)  # num_token_mlp_layers = 2
    with pytest.raises(OfficialImportError, match=r"2 weights.*head\.mlp\.layers\.1\.weight, head\.transformer\.encoder"):
        map_official_state(state)
    # SimVG's ViLT encoder option (no released config uses it).
    vilt = {k: v for k, v in official_state().items() if k.startswith("head.")}
    vilt["vis_enc.transformer.blocks.0.attn.qkv.weight"] = torch.ones(3, 3)
    with pytest.raises(OfficialImportError, match="only BEiT-3 encoders"):
        map_official_state(vilt)


def test_the_config_comes_from_the_weights_shapes():
    config = official_config(official_state(queries=10))
    encoder, head = config["model"]["encoder"], config["model"]["head"]
    assert encoder == {"type": "beit3", "pretrained": None, "hidden_size": 64, "num_layers": 2, "num_heads": 1,
                       "patch_size": 32, "intermediate_size": 96, "dropout": 0.0, "drop_path": 0.1,
                       "pixel_normalization": "imagenet"}  # fmt: skip
    assert config["model"]["image_size"] == 64 and config["model"]["max_text_length"] == 20
    assert config["model"]["resize"] == "stretch" and config["data"]["augment"]["mode"] == "lsj"  # SimVG's
    assert head["type"] == "simvg" and head["hidden_dim"] == 32 and head["num_queries"] == 10
    assert (head["tqg_layers"], head["tqg_ffn"], head["decoder_layers"], head["decoder_ffn"]) == (2, 16, 3, 48)
    assert config["loss"]["lambda_token"] == 2.0 and config["loss"]["lambda_kd"] == 1.0  # DWBD of ViT-B
    state = official_state()
    del state["head.query_embed.weight"]
    with pytest.raises(OfficialImportError, match="missing the weight 'head.query_embed.weight'"):
        official_config(state)


def test_ema_weights_and_ddp_prefixes(tmp_path):
    state = official_state()
    ema = {f"module.{k}": v + 1 for k, v in state.items()}
    path = tmp_path / "latest.pth"
    torch.save({"state_dict": state, "ema_state_dict": ema, "epoch": 3, "d_acc": np.float64(80.0),
                "optimizer": {"state": {}, "param_groups": []}}, path)  # fmt: skip
    plain, info = official_weights(path)
    averaged, _ = official_weights(path, ema=True)
    assert set(plain) == set(averaged) == set(state)
    assert torch.equal(averaged["head.query_embed.weight"], state["head.query_embed.weight"] + 1)
    assert info == {"epoch": 3, "d_acc": 80.0}
    torch.save({"state_dict": state}, tmp_path / "no_ema.pth")
    with pytest.raises(TorchFileError, match=r"no_ema\.pth: no 'ema_state_dict' entry \(this file has no EMA"):
        official_weights(tmp_path / "no_ema.pth", ema=True)


def test_an_official_file_becomes_a_checkpoint_that_grounds(tmp_path, capsys):
    from PIL import Image

    from simvg.cli import main
    from simvg.engine.checkpoint import load_checkpoint
    from simvg.inference import Grounder
    from tests.official_simvg import official_head_forward

    state = official_state(queries=2)
    source = tmp_path / "det_best.pth"
    torch.save({"state_dict": state, "epoch": 29, "d_acc": np.float64(88.0)}, source)
    spm_path = str(train_sentencepiece(tmp_path / "beit3.spm", vocab_size=60))
    assert main(["import-official", str(source), str(tmp_path / "imported"), "--tokenizer", spm_path]) == 0
    model, tokenizer, config, meta = load_checkpoint(tmp_path / "imported")
    assert config.model.head.type == "simvg" and meta["imported_from"]["epoch"] == 29
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    ids = torch.tensor([tokenizer("the red circle")["input_ids"]])
    with torch.no_grad():
        encoded = model.encoder(images, torch.ones(1, 64, 64, dtype=torch.bool), ids, torch.ones_like(ids, dtype=torch.bool))
        ours = model.heads(encoded)
    h, w = encoded.grid
    reference = official_head_forward(state, encoded.visual_tokens.transpose(1, 2).reshape(1, -1, h, w),
                                      encoded.object_token, encoded.text_tokens, ~encoded.text_mask)  # fmt: skip
    torch.testing.assert_close(ours["decoder"]["boxes"], reference["decoder"][-1][1], atol=1e-4, rtol=1e-4)
    result = Grounder.from_pretrained(tmp_path / "imported", device="cpu").predict(Image.new("RGB", (90, 70)), "the red circle")
    assert 0 <= result.box[0] <= result.box[2] <= 90


def test_the_command_names_a_bad_file(tmp_path, capsys):
    from simvg.cli import main

    (tmp_path / "x.pth").write_bytes(b"junk")
    assert main(["import-official", str(tmp_path / "x.pth"), str(tmp_path / "out"), "--tokenizer", "t.spm"]) == 2
    assert "x.pth: not a readable torch file" in capsys.readouterr().err  # a file too short to hold a pickle


def test_the_imported_model_gives_the_official_models_outputs(tmp_path):
    """The whole imported model against SimVG's: torchscale's BEiT3 with the file's encoder
    weights (SimVG's vis_enc, on ImageNet-normalised pixels and phrases padded to 20 tokens)
    followed by the official head's forward pass over the file's head weights."""
    pytest.importorskip("torchscale", reason="torchscale 0.3.0 is the reference BEiT-3 (make install-test installs it)")
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    from simvg.engine.checkpoint import load_checkpoint
    from simvg.engine.import_official import import_official
    from tests.official_simvg import official_head_forward

    state = official_state(queries=3, seed=1)
    torch.save({"state_dict": state}, tmp_path / "latest.pth")
    spm_path = train_sentencepiece(tmp_path / "beit3.spm", vocab_size=60)
    import_official(tmp_path / "latest.pth", tmp_path / "imported", spm_path)
    model, tokenizer, _, _ = load_checkpoint(tmp_path / "imported")
    args = EncoderConfig(img_size=TINY["image"], patch_size=TINY["patch"], vocab_size=TINY["vocab"], multiway=True,
                         layernorm_embedding=False, normalize_output=True, no_output_layer=True, drop_path_rate=0.0,
                         encoder_embed_dim=TINY["width"], encoder_attention_heads=1, encoder_ffn_embed_dim=TINY["ffn"],
                         encoder_layers=TINY["layers"])  # fmt: skip
    official_encoder = BEiT3(args).eval()
    official_encoder.load_state_dict({k[len("vis_enc.beit3."):]: v for k, v in state.items() if k.startswith("vis_enc.")})
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encoded = tokenizer(["the red circle left of the blue square", "zebra"], padding="max_length", max_length=20, truncation=True)
    ids = torch.tensor(encoded["input_ids"])
    pad = torch.tensor(encoded["attention_mask"]) == 0
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        sequence = official_encoder(textual_tokens=ids, visual_tokens=(images / 255 - mean) / std,
                                    text_padding_position=pad)["encoder_out"]  # fmt: skip
        reference = official_head_forward(state, sequence[:, 1:-20].transpose(1, 2).reshape(2, -1, 2, 2), sequence[:, 0],
                                          sequence[:, -20:], pad)  # fmt: skip
        ours = model(images, torch.ones(2, 64, 64, dtype=torch.bool), ids, ~pad)
    torch.testing.assert_close(ours["token"]["logits"], reference["token"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["token"]["boxes"], reference["token"][1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["decoder"]["logits"], reference["decoder"][-1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["decoder"]["boxes"], reference["decoder"][-1][1], atol=1e-4, rtol=1e-4)


def test_a_cpu_student_is_distilled_from_an_imported_model(synthref_root, tmp_path):
    """simvg distill takes the imported SimVG as a teacher: the student keeps some of its BEiT-3
    layers and gets the "cells" head the distillation losses train."""
    from simvg.cli import main
    from simvg.engine.checkpoint import load_checkpoint
    from tests.conftest import ROOT

    torch.save({"state_dict": official_state()}, tmp_path / "det_best.pth")
    spm_path = str(train_sentencepiece(tmp_path / "beit3.spm", vocab_size=60))
    assert main(["import-official", str(tmp_path / "det_best.pth"), str(tmp_path / "teacher"), "--tokenizer", spm_path]) == 0
    small = ["distill.student_layers=[1]", "data.dataset=synthref", "data.num_workers=0", "data.val_max_expressions=8",
             "train.batch_size=4", "train.warmup_steps=1", "train.eval_every=2", "train.save_every=2"]  # fmt: skip
    args = ["distill", str(ROOT / "configs" / "distill_simvg.yaml"), "--teacher", str(tmp_path / "teacher"),
            "--data-root", str(synthref_root), "--output", str(tmp_path / "student"), "--max-steps", "2", "--quiet"]  # fmt: skip
    assert main(args + [arg for item in small for arg in ("--set", item)]) == 0
    student, _, config, _ = load_checkpoint(tmp_path / "student" / "last")
    assert config.model.encoder.type == "beit3" and len(student.encoder.beit3.encoder.layers) == 1
    assert config.model.head.type == "cells" and config.model.head.token_branches == 3
