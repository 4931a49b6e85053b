"""A student is its teacher's structure made cheaper: cheap convolutions in the stem, fewer
encoder layers (initialised from the teacher's), a factorised word embedding, fewer query
generator layers, and a ONE multi-branch token head instead of the decoder branch. It answers
as its teacher does: one box per phrase, or (a teacher with several queries) every cell with
its own box and score."""

from __future__ import annotations

import copy
import re

import torch

from simvg.config import Config
from simvg.models import SimVG, build_model
from simvg.models.encoders.hybrid import FactorizedEmbedding

# Where each encoder keeps its transformer layers in the state dict.
LAYER_PREFIX = {"hybrid": "encoder.layers.", "vilt": "encoder.encoder.layer.", "beit3": "encoder.beit3.encoder.layers."}
# Where each encoder's backbone config records its depth (the others: Hugging Face's name).
DEPTH_KEY = {"beit3": "num_layers"}


def several_answers(config: Config) -> bool:
    """Whether a model of this Config answers a phrase with several scored boxes (a "cells"
    head's every cell, a "simvg" head's every query): ``model.head.num_queries`` > 1."""
    return config.model.head.num_queries > 1


def student_layers(teacher_layers: int, chosen: list[int] | None) -> list[int]:
    """The teacher layer indices the student keeps (default: every other layer)."""
    layers = chosen if chosen is not None else list(range(0, teacher_layers, 2))
    bad = [i for i in layers if not 0 <= i < teacher_layers]
    if bad or not layers:
        raise ValueError(f"distill.student_layers {chosen}: indices must lie in 0..{teacher_layers - 1}")
    return layers


def student_config(teacher_config: Config, layers: list[int], base: Config) -> Config:
    """The student's Config: the teacher's model made cheaper as ``base.distill`` says, with
    ``base``'s data, loss, training and distillation settings (``loss.landmark_ref`` only
    where the teacher has a words landmark pointer for it to supervise)."""
    config = copy.deepcopy(base)
    model = copy.deepcopy(teacher_config.model)
    d = base.distill
    model.encoder.layers = layers
    if model.encoder.type == "hybrid":
        model.encoder.stem_conv = d.stem_conv
        if d.stem_channels is not None:
            model.encoder.stem_channels = list(d.stem_channels)
        model.encoder.embedding_rank = d.embedding_rank
    if d.query_layers is not None:
        if not 1 <= d.query_layers <= model.head.tqg_layers:
            raise ValueError(
                f"distill.query_layers {d.query_layers}: must lie in 1..{model.head.tqg_layers} (the teacher's)"
            )
        model.head.tqg_layers = d.query_layers
    model.head.use_decoder = d.use_decoder
    # The distillation losses train our cell-based token branch; a student of a "simvg" head
    # teacher (an imported SimVG) gets that head, fresh, and learns from the teacher's boxes.
    # It answers as its teacher does: one answer per phrase, or several (every cell with its
    # own score) where the teacher gives several (docs/generalized-grounding.md).
    model.head.type = "cells"
    model.head.num_queries = model.head.num_queries if several_answers(teacher_config) else 1
    model.head.token_branches = d.token_branches
    model.head.deploy_branch = d.deploy_branch if d.token_branches > 1 else None
    config.model = model
    if config.loss.landmark_ref > 0 and not (model.head.landmark_relation and model.head.landmark_pointer != "token"):
        # The recipe supervises a words landmark pointer the student inherits; a teacher without
        # one gives the student nothing to supervise (and an object-token pointer lost accuracy
        # when supervised: docs/synthref-teacher.md).
        config.loss.landmark_ref = 0.0
    return config


def _source_key(key: str, layers: list[int], prefix: str, teacher_keys: set[str]) -> str | None:
    if key.startswith(prefix):
        index, rest = key[len(prefix) :].split(".", 1)
        return f"{prefix}{layers[int(index)]}.{rest}"
    branch = re.match(r"token_head\.one\.branches\.\d+\.(.*)", key)
    if branch and key not in teacher_keys:  # a plain teacher token branch seeds every ONE branch
        return f"token_head.{branch.group(1)}"
    return key


@torch.no_grad()
def init_from_teacher(student: SimVG, teacher: SimVG, layers: list[int], noise: float = 0.01, seed: int = 0) -> dict:
    """Copy every teacher tensor that has a place of the same shape in the student.

    Transformer layer j takes teacher layer ``layers[j]``; a factorised word embedding takes
    the truncated SVD of the teacher's; each ONE branch starts from the teacher's token
    branch, branches after the first with a little noise (relative std ``noise``) so that
    they can diverge. Cheap stem convolutions (a different structure) start fresh.
    Returns counts {"copied", "fresh"}.
    """
    teacher_state = teacher.state_dict()
    teacher_keys = set(teacher_state)
    prefix = LAYER_PREFIX[student.config.encoder.type]
    generator = torch.Generator().manual_seed(seed)
    state = student.state_dict()
    copied = fresh = 0
    for key, value in state.items():
        source = _source_key(key, layers, prefix, teacher_keys)
        if source in teacher_state and teacher_state[source].shape == value.shape:
            value.copy_(teacher_state[source])
            copied += 1
            branch = re.match(r"token_head\.one\.branches\.(\d+)\.", key)
            if branch and int(branch.group(1)) > 0 and value.is_floating_point() and value.numel() > 1:
                value.add_(torch.randn(value.shape, generator=generator) * noise * float(value.std()))
        else:
            fresh += 1
    student.load_state_dict(state)
    embedding = getattr(getattr(student.encoder, "embeddings", None), "word_embeddings", None)
    teacher_embedding = getattr(getattr(teacher.encoder, "embeddings", None), "word_embeddings", None)
    if isinstance(embedding, FactorizedEmbedding) and isinstance(teacher_embedding, torch.nn.Embedding):
        factorized = FactorizedEmbedding.from_embedding(teacher_embedding.weight, embedding.embed.embedding_dim)
        embedding.load_state_dict(factorized.state_dict())
        copied += 2
    return {"copied": copied, "fresh": fresh}


def build_student(
    teacher: SimVG, teacher_config: Config, teacher_backbone: dict, vocab_size: int, base: Config
) -> tuple[SimVG, Config, dict]:
    """The student model, its Config and its backbone (HF) config.

    With ``init_from_teacher`` the student's weights come from the teacher where shapes allow;
    without it (a from-scratch baseline) the encoder starts from the same pretrained weights
    the teacher started from (e.g. MiniLM's layers ``layers``), as a directly trained model would.
    """
    depth = DEPTH_KEY.get(teacher_config.model.encoder.type, "num_hidden_layers")
    layers = student_layers(int(teacher_backbone[depth]), base.distill.student_layers)
    config = student_config(teacher_config, layers, base)
    backbone = dict(teacher_backbone, **{depth: len(layers)})
    torch.manual_seed(base.train.seed)
    pretrained = not base.distill.init_from_teacher and config.model.encoder.pretrained is not None
    student = build_model(config.model, vocab_size, backbone_config=None if pretrained else backbone)
    if base.distill.init_from_teacher:
        init_from_teacher(student, teacher, layers, seed=base.train.seed)
    return student, config, backbone
