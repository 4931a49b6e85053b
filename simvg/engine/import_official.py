"""``simvg import-official``: SimVG's released checkpoints as our checkpoint directories.

SimVG (github Dmmm1997/SimVG) saves mmcv-style torch files: a dict with ``state_dict`` (the
model's weights), optionally ``ema_state_dict`` (the EMA copy), and ``meta``, ``optimizer``,
``scheduler``, ``epoch``, ``lr``, ``d_acc``, ... The model's weights are named after its
modules: ``vis_enc.beit3.<torchscale BEiT3 key>`` (the encoder, already at patch 32 and
640 px) and ``head.<...>`` (``TextGuidedQuerySelectKDDETRHead``). Every key is mapped to ours
(the encoder's to ``encoder.beit3.<same key>``, the head's to the "simvg" head's,
:data:`HEAD_KEYS`), the model's sizes are read from the weights' shapes, and the result is
written as an ordinary checkpoint directory. The file is read without running anything in it
(:func:`~simvg.engine.torch_files.load_torch_file`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from simvg.engine.torch_files import TorchFileError, load_torch_file
from simvg.models.encoders.beit3 import PRESETS, RELEASED_VOCAB_SIZE

# SimVG's head keys (regular expressions, after "head.") -> ours (after "head."); "{0}" is the
# key's first group. SimVG's layers are detrex's BaseTransformerLayer: attentions.0 = self-
# attention, attentions.1 = cross-attention, ffns.0.layers.0.0 / .1 = the FFN's two Linears,
# norms.0/1/2 after each block.
_LAYER_PARTS = {
    r"attentions\.0\.attn\.(.+)": "self_attn.{0}",
    r"attentions\.1\.attn\.(.+)": "cross_attn.{0}",
    r"ffns\.0\.layers\.0\.0\.(weight|bias)": "linear1.{0}",
    r"ffns\.0\.layers\.1\.(weight|bias)": "linear2.{0}",
    r"norms\.0\.(weight|bias)": "norm1.{0}",
    r"norms\.1\.(weight|bias)": "norm2.{0}",
    r"norms\.2\.(weight|bias)": "norm3.{0}",
}
_DECODERS = {  # SimVG's transformer decoders -> ours
    "text_guided_query_generation_transformer": "query_generator.decoder",
    "transformer.decoder": "decoder_branch.decoder",
}
HEAD_KEYS = {
    r"input_proj\.(weight|bias)": "visual_proj.{0}",  # a 1 x 1 Conv2d there, a Linear here
    r"input_text_proj\.(weight|bias)": "text_proj.{0}",
    r"input_cls_proj\.(weight|bias)": "object_proj.{0}",
    r"query_embed\.weight": "query_generator.query_embed.weight",
    r"mlp\.layers\.0\.(weight|bias)": "token_branch.proj.{0}",
    r"class_embed_token\.(weight|bias)": "token_branch.class_head.{0}",
    r"bbox_embed_token\.(layers\.\d+\.(?:weight|bias))": "token_branch.box_head.{0}",
    r"class_embed_decoder\.(weight|bias)": "decoder_branch.class_head.{0}",
    r"bbox_embed_decoder\.(layers\.\d+\.(?:weight|bias))": "decoder_branch.box_head.{0}",
}
for _theirs, _ours in _DECODERS.items():
    HEAD_KEYS[rf"{re.escape(_theirs)}\.post_norm_layer\.(weight|bias)"] = f"{_ours}.norm.{{0}}"
    for _part, _target in _LAYER_PARTS.items():
        HEAD_KEYS[rf"{re.escape(_theirs)}\.layers\.(\d+)\.{_part}"] = (
            f"{_ours}.layers.{{0}}.{_target.replace('{0}', '{1}')}"
        )

# Buffers of SimVG's training losses (class weights), not part of the model.
LOSS_BUFFERS = {"head.criterion.empty_weight", "head.criterion_harddistill.empty_weight"}

ENCODER_PREFIX, OUR_ENCODER_PREFIX = "vis_enc.beit3.", "encoder.beit3."
# SimVG's BEiT-3 heads are 64 wide (base 768 / 12, large 1024 / 16).
BEIT3_HEAD_DIM = 64
# SimVG's fixed head settings (not recorded in the weights' shapes).
SIMVG_HEADS, SIMVG_DROPOUT, SIMVG_TEXT_TOKENS = 8, 0.1, 20


class OfficialImportError(ValueError):
    """An official file whose weights do not map onto our model; the message lists the keys."""


def _our_key(key: str) -> str | None:
    """Our name for one of SimVG's model keys, or None if it has no place in our model."""
    if key.startswith(ENCODER_PREFIX):
        return OUR_ENCODER_PREFIX + key[len(ENCODER_PREFIX) :]
    if not key.startswith("head."):
        return None
    rest = key[len("head.") :]
    for pattern, target in HEAD_KEYS.items():
        found = re.fullmatch(pattern, rest)
        if found:
            return "head." + target.format(*found.groups())
    return None


def official_weights(path: str | Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """The model weights of a SimVG release (``state_dict``, or ``ema_state_dict`` with
    ``ema``) without DDP's ``module.`` prefix, and the file's other entries that are plain
    numbers or strings (epoch, lr, accuracies, ...)."""
    data = load_torch_file(path)
    entry = "ema_state_dict" if ema else "state_dict"
    if entry not in data:
        hint = (
            " (this file has no EMA weights: import without --ema)"
            if ema and "state_dict" in data
            else ""
        )
        raise TorchFileError(
            f"{path}: no '{entry}' entry{hint}; the file holds: {', '.join(map(str, data)) or 'nothing'}"
        )
    state = data[entry]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorchFileError(f"{path}: '{entry}' is not a dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    info = {k: v.item() if hasattr(v, "item") and not isinstance(v, torch.Tensor) else v for k, v in data.items()
            if isinstance(v, (int, float, str)) or type(v).__module__ == "numpy"}  # fmt: skip
    return state, info


def map_official_state(
    state: dict[str, torch.Tensor], source: str = "the file"
) -> dict[str, torch.Tensor]:
    """SimVG's model keys -> ours (tensors shared, the input projection's 1 x 1 kernel
    flattened). Raises :class:`OfficialImportError` listing every key that has no place in
    our model."""
    mapped, unmapped = {}, []
    for key, value in state.items():
        if key in LOSS_BUFFERS:
            continue
        ours = _our_key(key)
        if ours is None:
            unmapped.append(key)
            continue
        mapped[ours] = value.flatten(1) if ours == "head.visual_proj.weight" else value
    if unmapped:
        encoder = [k for k in unmapped if k.startswith("vis_enc.")]
        hint = (" (this is not a BEiT-3 SimVG: only BEiT-3 encoders are imported)" if encoder else
                " (a head option the paper's head does not have, e.g. num_token_mlp_layers != 1 or a DETR encoder)")  # fmt: skip
        raise OfficialImportError(f"{source}: {len(unmapped)} weights have no place in our model{hint}: "
                                  f"{', '.join(sorted(unmapped))}")  # fmt: skip
    return mapped


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def _shape(state: dict, key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise OfficialImportError(
            f"{source}: missing the weight '{key}', which every SimVG model has"
        )
    return tuple(state[key].shape)


def official_config(state: dict[str, torch.Tensor], source: str = "the file") -> dict:
    """Our config (a dict for :class:`~simvg.config.Config`) of the model in SimVG's ``state``
    (its own key names), read from the weights' shapes: BEiT-3's width, depth, FFN size,
    patch and image size; the head's width, queries, query generator and decoder depth; with
    SimVG's pre-processing and DWBD weights."""
    width = _shape(state, "vis_enc.beit3.text_embed.weight", source)[1]
    patch = _shape(state, "vis_enc.beit3.vision_embed.proj.weight", source)[-1]
    positions = _shape(state, "vis_enc.beit3.encoder.embed_positions.A.weight", source)[0]
    side = math.isqrt(positions - 3)  # the patches + the CLS token + fairseq's 2 offset rows
    if side * side != positions - 3:
        raise OfficialImportError(
            f"{source}: {positions} vision position embeddings do not make a square grid"
        )
    layers = _count(state, r"vis_enc\.beit3\.encoder\.layers\.(\d+)\..*")
    sizes = {"hidden_size": width, "num_layers": layers, "num_heads": width // BEIT3_HEAD_DIM,
             "intermediate_size": _shape(state, "vis_enc.beit3.encoder.layers.0.ffn.A.fc1.weight", source)[0]}  # fmt: skip
    # SimVG's BEiT-3: no dropout, stochastic depth 0.1 (they matter only to fine-tuning).
    encoder = {"type": "beit3", "pretrained": None, **sizes, "patch_size": patch, "dropout": 0.0, "drop_path": 0.1,
               "pixel_normalization": "imagenet"}  # fmt: skip
    rows = _shape(state, "vis_enc.beit3.text_embed.weight", source)[0]
    preset = next((name for name, preset in PRESETS.items() if preset == sizes), None)
    if preset is not None and rows == RELEASED_VOCAB_SIZE:
        encoder["preset"] = preset
    tqg = "head.text_guided_query_generation_transformer"
    head = {
        "type": "simvg",
        "hidden_dim": _shape(state, "head.input_cls_proj.weight", source)[0],
        "num_queries": _shape(state, "head.query_embed.weight", source)[0],
        "tqg_layers": _count(state, rf"{re.escape(tqg)}\.layers\.(\d+)\..*"),
        "tqg_heads": SIMVG_HEADS,
        "tqg_ffn": _shape(state, f"{tqg}.layers.0.ffns.0.layers.0.0.weight", source)[0],
        "decoder_layers": _count(state, r"head\.transformer\.decoder\.layers\.(\d+)\..*"),
        "decoder_heads": SIMVG_HEADS,
        "decoder_ffn": _shape(
            state, "head.transformer.decoder.layers.0.ffns.0.layers.0.0.weight", source
        )[0],
        "dropout": SIMVG_DROPOUT,
        "box_mlp_layers": _count(state, r"head\.bbox_embed_token\.layers\.(\d+)\..*"),
        "use_decoder": True,
    }
    # DWBD as SimVG trains each size: ViT-B lambda (2, 1), ViT-L (1, 0.4).
    large = width >= 1024
    loss = {
        "score_target": "label",
        "lambda_token": 1.0 if large else 2.0,
        "lambda_kd": 0.4 if large else 1.0,
    }
    # SimVG's pre-processing: stretched to the square input (no letterbox), ImageNet mean/std;
    # for fine-tuning, its large-scale jitter without flips or colour jitter.
    model = {"image_size": side * patch, "max_text_length": SIMVG_TEXT_TOKENS, "resize": "stretch", "encoder": encoder,
             "head": head}  # fmt: skip
    data = {"augment": {"mode": "lsj", "scale": [0.3, 1.4], "flip": 0.0, "color": 0.0}}
    return {"model": model, "data": data, "loss": loss}


def load_mapped(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str = "the file"
) -> None:
    """Load mapped weights into ``model``; raises :class:`OfficialImportError` naming the
    model's weights the file lacks, or those whose shapes differ."""
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise OfficialImportError(
            f"{source}: {len(missing)} of our model's weights are missing from it: {', '.join(missing)}"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise OfficialImportError(
            f"{source}: its weights do not fit the model its shapes describe: {err}"
        ) from err


def import_official(
    source: str | Path, output: str | Path, tokenizer: str | Path, ema: bool = False
) -> dict:
    """Write SimVG's released file ``source`` as a checkpoint directory ``output``, with the
    tokenizer at ``tokenizer`` (BEiT-3's ``beit3.spm``). Returns a summary (sizes, entry)."""
    from simvg.config import Config, from_dict
    from simvg.engine.checkpoint import save_checkpoint
    from simvg.models import build_model
    from simvg.models.pretrained import load_tokenizer

    state, info = official_weights(source, ema)
    config_dict = official_config(state, str(source))
    weights = map_official_state(state, str(source))
    config_dict["model"]["encoder"]["tokenizer"] = str(Path(tokenizer).expanduser().resolve())
    config = from_dict(Config, config_dict)
    tok = load_tokenizer(str(tokenizer))
    vocab_size = int(state["vis_enc.beit3.text_embed.weight"].shape[0])
    model = build_model(config.model, vocab_size, backbone_config=None)
    load_mapped(model, weights, str(source))
    imported = {
        "file": Path(source).name,
        "weights": "ema_state_dict" if ema else "state_dict",
        **info,
    }
    save_checkpoint(output, model.eval(), config, model.encoder.backbone_config(), tok,
                    extra={"vocab_size": vocab_size, "imported_from": imported})  # fmt: skip
    return {"output": str(output), "weights": imported["weights"], "model": config_dict["model"]}
