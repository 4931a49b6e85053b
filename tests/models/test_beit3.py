"""The beit3 encoder: torchscale's BEiT-3 exactly, released checkpoints, BEiT-3's tokenizer."""

from __future__ import annotations

import argparse
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simvg.config import EncoderConfig, HeadConfig, ModelConfig
from simvg.data.dataset import Collator, Preprocessor
from simvg.data.images import LoadedImage
from simvg.engine.checkpoint import load_checkpoint, save_checkpoint
from simvg.engine.torch_files import TorchFileError
from simvg.models import build_model
from simvg.models.encoders import build_encoder
from simvg.models.encoders.base import normalize_images
from simvg.models.encoders.beit3 import BEiT3, BEiT3Structure
from simvg.models.pretrained import SENTENCEPIECE_FILE, load_tokenizer
from tests.conftest import ROOT

TINY_HEAD = HeadConfig(
    hidden_dim=32,
    tqg_layers=1,
    tqg_heads=2,
    tqg_ffn=32,
    decoder_layers=2,
    decoder_heads=2,
    decoder_ffn=32,
)
PHRASES = ["the red circle left of the blue square", "a man in a white shirt on the right",
           "the small green triangle near the big yellow star", "zebra behind the bus",
           "leftmost purple hexagon", "the dog on the couch next to the window"]  # fmt: skip


def beit3_config(image_size: int = 64, **encoder) -> ModelConfig:
    sizes = dict(type="beit3", pretrained=None, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                 patch_size=16, dropout=0.0)  # fmt: skip
    return ModelConfig(
        image_size=image_size, encoder=EncoderConfig(**(sizes | encoder)), head=TINY_HEAD
    )


def inputs(
    batch: int = 2, size: int = 64, length: int = 7, vocab: int = 100, letterbox: bool = False
):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    pixel_mask = torch.ones(batch, size, size, dtype=torch.bool)
    if letterbox:
        pixel_mask[0, :, size // 2 :] = False  # image 0: its right half is padding
    input_ids = torch.randint(4, vocab, (batch, length), generator=generator)
    text_mask = torch.ones(batch, length, dtype=torch.bool)
    text_mask[1, 4:] = False  # phrase 1 is shorter: 3 padded tokens
    input_ids[~text_mask] = 1
    return images, pixel_mask, input_ids, text_mask


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and buffer away from its initial value (biases, LayerNorms, CLS token)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.copy_(
                0.3 * torch.randn(tensor.shape, generator=generator)
                + (0.5 if tensor.dim() == 1 else 0.0)
            )


def torchscale_beit3(**sizes):
    torchscale = pytest.importorskip(
        "torchscale",
        reason="torchscale 0.3.0 is the reference BEiT-3 (make install-test installs it)",
    )
    from torchscale.architecture.config import EncoderConfig as TorchscaleConfig
    from torchscale.model.BEiT3 import BEiT3 as TorchscaleBEiT3

    assert torchscale is not None
    # BEiT-3's own configuration (unilm beit3 _get_base_config with these sizes).
    args = TorchscaleConfig(multiway=True, layernorm_embedding=False, normalize_output=True, no_output_layer=True,
                            **sizes)  # fmt: skip
    return TorchscaleBEiT3(args).eval()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_same_outputs_as_torchscale_beit3(attention):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's moved-module warning, from torchscale's import
        reference = torchscale_beit3(img_size=64, patch_size=16, vocab_size=100, encoder_embed_dim=64,
                                     encoder_attention_heads=4, encoder_ffn_embed_dim=128, encoder_layers=2)  # fmt: skip
    randomize(reference)
    encoder = build_encoder(beit3_config(attention=attention), vocab_size=100).eval()
    # Our weights are named exactly as torchscale's (the model's keys add "encoder.beit3.").
    assert set(encoder.beit3.state_dict()) == set(reference.state_dict())
    model_keys = {
        k for k in build_model(beit3_config(), 100).state_dict() if k.startswith("encoder.")
    }
    assert model_keys == {f"encoder.beit3.{k}" for k in reference.state_dict()}
    encoder.beit3.load_state_dict(reference.state_dict())

    images, pixel_mask, input_ids, text_mask = inputs()
    with torch.no_grad():
        theirs = reference(textual_tokens=input_ids, visual_tokens=normalize_images(images, "imagenet"),
                           text_padding_position=~text_mask)["encoder_out"]  # fmt: skip
        ours = encoder(images, pixel_mask, input_ids, text_mask)
    assert (
        ours.grid == (4, 4)
        and ours.visual_tokens.shape == (2, 16, 64)
        and ours.text_tokens.shape == (2, 7, 64)
    )
    sequence = torch.cat([ours.object_token[:, None], ours.visual_tokens, ours.text_tokens], dim=1)
    assert (sequence - theirs).abs().max() <= 1e-4
    assert theirs.abs().max() > 1  # the comparison is not between near-zero outputs

    # Letterbox padding: padded patches are left out of attention as torchscale's encoder
    # leaves out any token its padding mask names.
    images, pixel_mask, input_ids, text_mask = inputs(letterbox=True)
    with torch.no_grad():
        ours = encoder(images, pixel_mask, input_ids, text_mask)
        tokens = torch.cat([reference.vision_embed(normalize_images(images, "imagenet")),
                            reference.text_embed(input_ids)], dim=1)  # fmt: skip
        padding = torch.cat(
            [torch.zeros(2, 1, dtype=torch.bool), ~ours.visual_mask, ~text_mask], dim=1
        )
        theirs = reference.encoder(src_tokens=None, encoder_padding_mask=padding, token_embeddings=tokens,
                                   multiway_split_position=17)["encoder_out"]  # fmt: skip
    assert ours.visual_mask[0].reshape(4, 4)[:, 2:].sum() == 0 and ours.visual_mask[1].all()
    sequence = torch.cat([ours.object_token[:, None], ours.visual_tokens, ours.text_tokens], dim=1)
    assert (sequence - theirs).abs().max() <= 1e-4


def test_the_presets_are_beit3_base_and_large():
    with torch.device("meta"):  # shapes only
        base = build_encoder(beit3_config(640, preset="base", patch_size=32), vocab_size=64002)
        large = build_encoder(
            beit3_config(640, preset="large", patch_size=32), vocab_size=64002
        ).structure
    s = base.structure
    assert (s.hidden_size, s.num_layers, s.num_heads, s.intermediate_size) == (768, 12, 12, 3072)
    assert (
        s.grid == (20, 20) and s.vocab_size == 64010
    )  # BEiT-3's text embedding, whatever the tokenizer's size
    assert base.beit3.encoder.embed_positions.A.weight.shape == (2 + 1 + 400, 768)
    assert base.beit3.vision_embed.proj.weight.shape == (768, 3, 32, 32)
    assert (large.hidden_size, large.num_layers, large.num_heads, large.intermediate_size) == (
        1024,
        24,
        16,
        4096,
    )


def released_checkpoint(path: Path, structure: BEiT3Structure, extra: dict | None = None) -> dict:
    """A torch file as Microsoft releases BEiT-3 (``model`` holds ``beit3.``-prefixed weights);
    returns the backbone's weights."""
    torch.manual_seed(1)
    backbone = BEiT3(structure)
    randomize(backbone, seed=1)
    weights = backbone.state_dict()
    # Beside the backbone: a fine-tuned task's head, or the pre-training heads (masked image
    # modelling outside beit3, masked language modelling as torchscale's output layer).
    heads = {"head.weight": torch.zeros(3, structure.hidden_size), "mim_head.weight": torch.zeros(8, structure.hidden_size),
             "beit3.encoder.output_projection.weight": torch.zeros(structure.vocab_size, structure.hidden_size)}  # fmt: skip
    model = {f"beit3.{k}": v for k, v in weights.items()} | heads
    torch.save({"model": model, "epoch": 20} | (extra or {}), path)
    return weights


RELEASED = BEiT3Structure(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=16,
                          image_size=128, vocab_size=64)  # fmt: skip


@pytest.mark.parametrize("name", ["beit3_tiny_patch16_128.pth", "beit3_tiny_patch16_128.zip"])
def test_released_patch16_checkpoint_loads_into_patch32_encoder(tmp_path, name):
    released = released_checkpoint(tmp_path / name, RELEASED)  # 16-px patches on an 8x8 grid
    config = beit3_config(160, pretrained=str(tmp_path / name), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, patch_size=32)  # fmt: skip
    encoder = build_encoder(
        config, vocab_size=40
    )  # 32-px patches on a 5x5 grid; the file's 64 text rows
    loaded = encoder.beit3.state_dict()
    kernel = loaded["vision_embed.proj.weight"]
    assert kernel.shape == (32, 3, 32, 32)
    want = F.interpolate(
        released["vision_embed.proj.weight"], size=(32, 32), mode="bicubic", align_corners=False
    )
    assert torch.allclose(kernel, want, atol=1e-6)
    positions = loaded["encoder.embed_positions.A.weight"]
    assert positions.shape == (3 + 25, 32)
    assert torch.equal(
        positions[:3], released["encoder.embed_positions.A.weight"][:3]
    )  # 2 unused rows + CLS
    grid = released["encoder.embed_positions.A.weight"][3:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    want = (
        F.interpolate(grid, size=(5, 5), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(25, 32)
    )
    assert torch.allclose(positions[3:], want, atol=1e-6)
    for key, value in released.items():
        if key not in ("vision_embed.proj.weight", "encoder.embed_positions.A.weight"):
            assert torch.equal(loaded[key], value), key
    assert encoder.structure.vocab_size == 64
    out = encoder.eval()(*inputs(size=160, vocab=40))
    assert out.grid == (5, 5) and torch.isfinite(out.visual_tokens).all()


def test_a_constant_patch_kernel_stays_constant_when_resized(tmp_path):
    weights = released_checkpoint(tmp_path / "b.pth", RELEASED)
    content = torch.load(tmp_path / "b.pth", weights_only=True)
    content["model"]["beit3.vision_embed.proj.weight"] = torch.full_like(
        weights["vision_embed.proj.weight"], 0.25
    )
    torch.save(content, tmp_path / "b.pth")
    config = beit3_config(128, pretrained=str(tmp_path / "b.pth"), hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, patch_size=32)  # fmt: skip
    kernel = build_encoder(config, vocab_size=50).beit3.vision_embed.proj.weight
    assert torch.allclose(kernel, torch.full_like(kernel, 0.25), atol=1e-6)


def test_a_checkpoint_that_does_not_fit_lists_the_keys(tmp_path):
    path = tmp_path / "b.pth"
    released_checkpoint(path, RELEASED)
    fields = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    with pytest.raises(
        ValueError, match=r"b\.pth.*20 shapes differ.*fc1\.weight: file \(64, 32\), model \(96, 32\)"
    ):
        build_encoder(
            beit3_config(128, pretrained=str(path), **(fields | {"intermediate_size": 96})), 50
        )
    with pytest.raises(ValueError, match=r"40 unexpected: encoder\.layers\.1\."):
        build_encoder(beit3_config(128, pretrained=str(path), **(fields | {"num_layers": 1})), 50)
    content = torch.load(path, weights_only=True)
    del content["model"]["beit3.encoder.layer_norm.B.bias"]
    content["model"]["beit3.encoder.relative_position.relative_attention_bias.weight"] = (
        torch.zeros(32, 2)
    )
    torch.save(content, path)
    with pytest.raises(
        ValueError,
        match=r"1 missing: encoder\.layer_norm\.B\.bias.*1 unexpected: encoder\.relative_position",
    ):
        build_encoder(beit3_config(128, pretrained=str(path), **fields), 50)
    with pytest.raises(
        ValueError, match=r"tokenizer has 65 ids but the BEiT-3 text embedding has 64 rows"
    ):
        build_encoder(beit3_config(128, pretrained=str(path), **fields), 65)
    torch.save({"model": {"visual.proj": torch.zeros(2)}}, path)
    with pytest.raises(TorchFileError, match=r"b\.pth: no 'beit3\.' weights"):
        build_encoder(beit3_config(128, pretrained=str(path), **fields), 50)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_encoder(beit3_config(128, pretrained=str(tmp_path / "nowhere.pth"), **fields), 50)


class RunsCode:
    """What a malicious pickle holds: unpickling it would call a function."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.makedirs, (str(self.flag),))


def test_a_file_with_a_non_tensor_global_is_refused_naming_it(tmp_path):
    fields = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    path = tmp_path / "with_args.pth"
    released_checkpoint(path, RELEASED, extra={"args": argparse.Namespace(lr=1e-3)})
    with pytest.raises(
        TorchFileError, match=r"with_args\.pth: refused to load.*'argparse\.Namespace'"
    ):
        build_encoder(beit3_config(128, pretrained=str(path), **fields), 50)
    flag = tmp_path / "code_ran"
    released_checkpoint(tmp_path / "evil.zip", RELEASED, extra={"payload": RunsCode(flag)})
    with pytest.raises(TorchFileError, match=r"evil\.zip: refused to load.*'os\.makedirs'"):
        build_encoder(beit3_config(128, pretrained=str(tmp_path / "evil.zip"), **fields), 50)
    assert not flag.exists()


def train_sentencepiece(path: Path, vocab_size: int = 60) -> Path:
    """A tiny unigram sentencepiece model with XLM-R's (and beit3.spm's) special pieces."""
    import sentencepiece

    letters = " ".join("abcdefghijklmnopqrstuvwxyz")  # every lowercase letter is a piece
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(PHRASES * 20 + [letters]), model_writer=buffer,
                                             vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
                                             hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "beit3.spm")


def simvg_token_ids(spm: Path, phrase: str, max_token: int = 20) -> tuple[list[int], list[int]]:
    """SimVG's BEiT-3 text input, computed from sentencepiece as BEiT-3's XLMRobertaTokenizer
    maps pieces (fairseq: <s>=0 <pad>=1 </s>=2 <unk>=3, piece i -> i + 1): <s>, the first
    max_token - 2 pieces, </s>, <pad> to max_token; and the padding mask (1 = padding)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    pieces = [processor.piece_to_id(p) for p in processor.encode(phrase, out_type=str)]
    ids = [0] + [i + 1 if i != 0 else 3 for i in pieces][: max_token - 2] + [2]
    return ids + [1] * (max_token - len(ids)), [0] * len(ids) + [1] * (max_token - len(ids))


def test_beit3_tokenizer_through_our_loader_and_padding(spm_file):
    tokenizer = load_tokenizer(str(spm_file))
    long = " ".join(PHRASES)  # well over 20 tokens: truncated as SimVG truncates
    phrases = ["The red circle, left of the BLUE square!", "zebra", long, "a café"]
    preprocessor = Preprocessor(tokenizer, image_size=32, max_text_length=20)
    image = LoadedImage(np.zeros((32, 32, 3), np.uint8), 32, 32)
    batch = Collator(tokenizer.pad_token_id)([preprocessor(image, phrase) for phrase in phrases])
    assert batch.input_ids.shape == (4, 20)  # the long phrase fills all 20
    for row, phrase in enumerate(phrases):
        ids, padding = simvg_token_ids(spm_file, phrase)
        assert batch.input_ids[row].tolist() == ids, phrase
        assert batch.text_mask[row].tolist() == [p == 0 for p in padding]
    assert tokenizer.pad_token_id == 1 and len(tokenizer) == 60 + 2  # the pieces, <pad> and <mask>
    with pytest.raises(ValueError, match="not a readable sentencepiece model"):
        load_tokenizer(__file__)


def test_checkpoint_carries_the_sentencepiece_model_and_reloads_without_the_originals(
    spm_file, tmp_path
):
    spm = tmp_path / "beit3.spm"
    spm.write_bytes(spm_file.read_bytes())
    released_checkpoint(tmp_path / "beit3_tiny.pth", RELEASED)
    config = beit3_config(64, pretrained=str(tmp_path / "beit3_tiny.pth"), tokenizer=str(spm), hidden_size=32,
                          num_layers=2, num_heads=2, intermediate_size=64, patch_size=32)  # fmt: skip
    tokenizer = load_tokenizer(str(spm))
    torch.manual_seed(0)
    model = build_model(config, len(tokenizer)).eval()
    from simvg.config import Config

    save_checkpoint(
        tmp_path / "ckpt", model, Config(model=config), model.encoder.backbone_config(), tokenizer
    )
    assert (tmp_path / "ckpt" / SENTENCEPIECE_FILE).read_bytes() == spm_file.read_bytes()
    assert (
        json.loads((tmp_path / "ckpt" / "config.json").read_text())["backbone_config"]["patch_size"]
        == 32
    )
    spm.unlink()
    (tmp_path / "beit3_tiny.pth").unlink()  # the model is rebuilt from the checkpoint alone
    loaded, reloaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    phrase = "the small green triangle near the big yellow star"
    assert reloaded(phrase)["input_ids"] == tokenizer(phrase)["input_ids"]
    images, pixel_mask, _, text_mask = inputs(size=64)
    input_ids = torch.tensor([tokenizer(p)["input_ids"][:7] for p in PHRASES[:2]])
    with torch.no_grad():
        before, after = (
            model(images, pixel_mask, input_ids, text_mask),
            loaded(images, pixel_mask, input_ids, text_mask),
        )
    assert torch.allclose(before["token"]["boxes"], after["token"]["boxes"], atol=1e-6)
    # Saved again (an export of the loaded model): the sentencepiece model comes along.
    save_checkpoint(
        tmp_path / "again", loaded, Config(model=config), loaded.encoder.backbone_config(), reloaded
    )
    assert (tmp_path / "again" / SENTENCEPIECE_FILE).read_bytes() == spm_file.read_bytes()


def test_beit3_tiny_trains_evaluates_and_predicts_through_the_cli(
    spm_file, synthref_root, tmp_path, capsys
):
    from simvg.cli import main

    config = ROOT / "configs" / "beit3_tiny.yaml"
    run = tmp_path / "run"
    assert main(["train", str(config), "--data-root", str(synthref_root), "--output", str(run), "--quiet",
                 "--set", f"model.encoder.tokenizer={spm_file}"]) == 0  # fmt: skip
    checkpoint = run / "last"
    saved = json.loads((checkpoint / "config.json").read_text())
    assert (
        saved["config"]["model"]["encoder"]["type"] == "beit3"
        and (checkpoint / SENTENCEPIECE_FILE).is_file()
    )
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--data-root", str(synthref_root), "--dataset", "synthref",
                 "--split", "val", "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert set(metrics) == {"token", "decoder"} and metrics["token"]["count"] > 0
    image = next((synthref_root / "images" / "synthref" / "val").glob("*.png"))
    assert (
        main(
            [
                "predict",
                str(checkpoint),
                "--image",
                str(image),
                "--text",
                "the red circle",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    x0, y0, x1, y1 = result["box"]
    assert 0 <= x0 <= x1 and 0 <= y0 <= y1 and 0 <= result["score"] <= 1


def test_beit3_needs_its_tokenizer_and_a_beit3_checkpoint():
    from simvg.config import Config
    from simvg.engine.tasks import tokenizer_source

    with pytest.raises(ValueError, match="model.encoder.tokenizer.*beit3.spm"):
        tokenizer_source(Config(model=beit3_config()))
    with pytest.raises(ValueError, match="'minilm-l6'.*BEiT-3 torch file"):
        build_encoder(beit3_config(pretrained="minilm-l6"), 100)
