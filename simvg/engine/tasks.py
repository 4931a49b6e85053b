"""Building what ``simvg train`` trains: tokenizer, datasets, model and its loss."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from simvg.config import Config, LossConfig
from simvg.data.check import check_record_images
from simvg.data.dataset import Batch, GroundingDataset, Preprocessor
from simvg.data.readers import load_records
from simvg.data.records import PER_EXPRESSION_EXTRAS, GroundingRecord
from simvg.engine.train import TrainingTask
from simvg.models import build_criterion, build_model
from simvg.models.auxiliary import AuxiliaryLosses
from simvg.models.category import CategoryLoss
from simvg.models.landmark import LandmarkOffsetLoss
from simvg.models.pretrained import MINILM_ALIAS, load_tokenizer
from simvg.models.word_alignment import WordAlignmentLoss


def quiet_transformers() -> None:
    """Hide transformers' load reports (e.g. the unused pooler of a text checkpoint)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def tokenizer_source(config: Config) -> str:
    encoder = config.model.encoder
    if encoder.type == "beit3" and not encoder.tokenizer:
        raise ValueError("model.encoder.tokenizer: the beit3 encoder reads phrases with BEiT-3's sentencepiece "
                         "model; give the path of beit3.spm (docs/beit3.md)")  # fmt: skip
    return encoder.tokenizer or encoder.pretrained or MINILM_ALIAS


class GroundingLoss(nn.Module):
    """The model plus its criterion: forward(batch) -> (weighted total, logs).

    ``auxiliary`` (optional) adds word alignment / category supervision of the referred
    object's visual token; its heads are trained here and not saved with the model.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, auxiliary: AuxiliaryLosses | None = None):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.auxiliary = auxiliary

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self.model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
        targets = batch.targets if batch.targets is not None else batch.target_sets
        losses, stats = self.criterion(outputs, targets)
        total = self.criterion.total(losses, self.model.config.head.decoder_layers)
        if self.auxiliary is not None:
            extra = self.auxiliary(self.model, outputs, batch)
            total = total + sum(extra[k] * self.auxiliary.weight_dict[k] for k in extra)
            losses |= extra
        return total, {k: float(v.detach()) for k, v in losses.items()} | stats


def build_auxiliary_losses(
    model: nn.Module, config: Config, tokenizer, train_records: list[GroundingRecord]
) -> AuxiliaryLosses | None:
    """The auxiliary heads that ``loss.word_alignment``, ``loss.category`` and
    ``loss.landmark_offset`` ask for (None if none): the first two need an encoder with its own
    visual stem (hybrid); category and landmark supervision need training records that name
    their object's category / their phrases' landmarks."""
    loss = config.loss
    if (loss.word_alignment <= 0 and loss.category <= 0 and loss.scene_category <= 0 and loss.landmark_offset <= 0
            and loss.landmark_ref <= 0):  # fmt: skip
        return None
    if loss.landmark_ref > 0 and not config.model.head.landmark_relation:
        raise ValueError("loss.landmark_ref trains the token branch's landmark pointer; set "
                         "model.head.landmark_relation=true or loss.landmark_ref=0")  # fmt: skip
    visual_only = loss.word_alignment > 0 or loss.category > 0 or loss.scene_category > 0
    if visual_only and model.encoder.stem is None:
        raise ValueError(
            f"loss.word_alignment, loss.category and loss.scene_category need an encoder with its own visual "
            f"stem (hybrid), not '{config.model.encoder.type}'; set them to 0"
        )
    width = model.encoder.hidden_size
    word_alignment = WordAlignmentLoss(width, tokenizer.all_special_ids) if loss.word_alignment > 0 else None
    where = f"'{config.data.train_split}' record of dataset '{config.data.dataset}'"
    category = None
    if loss.category > 0 or loss.scene_category > 0:
        categories = {r.category for r in train_records if r.category is not None} if loss.category > 0 else set()
        if loss.category > 0 and not categories:
            raise ValueError(
                f"loss.category needs records with a category ('category_id' or 'category'), but no {where} has "
                f"one; set loss.category=0"
            )
        if loss.scene_category > 0:
            scene = {c for r in train_records for _, c in r.scene_objects() or []}
            if not scene:
                raise ValueError(
                    f"loss.scene_category needs records that list their image's objects (SynthRef 'objects', "
                    f"the refer layout's COCO annotations), but no {where} does; set loss.scene_category=0"
                )
            categories |= scene
        category = CategoryLoss(width, sorted(categories, key=str))
    for key in ("landmark_offset", "landmark_ref"):
        if getattr(loss, key) > 0 and not any(
            r.landmark_box(i) is not None for r in train_records for i in range(len(r.expressions))
        ):
            raise ValueError(
                f"loss.{key} needs phrases whose annotations name a landmark (SynthRef programs), but no {where} "
                f"has one; set loss.{key}=0"
            )
    landmark = LandmarkOffsetLoss(width) if loss.landmark_offset > 0 else None
    weights = {"loss_word_alignment": loss.word_alignment, "loss_category": loss.category,
               "loss_scene_category": loss.scene_category, "loss_landmark_offset": loss.landmark_offset,
               "loss_landmark_ref": loss.landmark_ref}  # fmt: skip
    return AuxiliaryLosses(word_alignment, category, weights, landmark, scene_category=loss.scene_category > 0,
                           landmark_ref=loss.landmark_ref > 0)  # fmt: skip


def filter_expression_types(records: list[GroundingRecord], types: list[str]) -> list[GroundingRecord]:
    """Keep only expressions of the given types (records left with none are dropped)."""
    kept = []
    for record in records:
        if record.expression_types is None:
            raise ValueError(
                f"data.train_expression_types needs typed expressions, but {record.image_path} "
                f"(ref_id {record.ref_id}) has no expression_types"
            )
        keep = [i for i, t in enumerate(record.expression_types) if t in types]
        if keep:
            # Per-expression annotations (SynthRef's programs, which name each phrase's
            # landmark) follow their phrases.
            extra = {k: ([v[i] for i in keep] if k in PER_EXPRESSION_EXTRAS and isinstance(v, list) else v)
                     for k, v in record.extra.items()}  # fmt: skip
            kept.append(dataclasses.replace(record, expressions=[record.expressions[i] for i in keep],
                                            expression_types=[record.expression_types[i] for i in keep], extra=extra))  # fmt: skip
    if not kept:
        raise ValueError(f"no training expression has a type in {types}")
    return kept


def build_datasets(
    config: Config, data_root: str | Path, tokenizer, train: bool = True
) -> tuple[GroundingDataset | None, GroundingDataset | None]:
    """The training dataset (augmented) and the validation dataset (or None if no val split)."""
    data = config.data
    model = config.model
    train_set = None
    if train:
        records = load_records(data_root, data.dataset, data.train_split, data.image_root)
        # Unreadable images fail here, in seconds, not when a batch first reaches them.
        check_record_images(records, f"dataset '{data.dataset}', split '{data.train_split}'")
        if data.train_expression_types is not None:
            records = filter_expression_types(records, data.train_expression_types)
        preprocessor = Preprocessor(tokenizer, model.image_size, model.max_text_length, data.augment, model.resize)
        train_set = GroundingDataset(records, preprocessor, train=True, seed=config.train.seed,
                                     landmarks=config.loss.landmark_offset > 0 or config.loss.landmark_ref > 0,
                                     scene_objects=config.loss.scene_category > 0 or config.train.stem_pretrain_steps > 0)  # fmt: skip
    val_set = None
    if data.val_split:
        records = load_records(data_root, data.dataset, data.val_split, data.image_root)
        check_record_images(records, f"dataset '{data.dataset}', split '{data.val_split}'")
        preprocessor = Preprocessor(tokenizer, model.image_size, model.max_text_length, resize=model.resize)
        val_set = GroundingDataset(records, preprocessor, train=False, max_items=data.val_max_expressions)
    return train_set, val_set


def token_branch_trained(loss: LossConfig) -> bool:
    """Whether any loss reaches the token branch. SimVG's two-stage recipe first trains the
    decoder branch alone: ``loss.lambda_token`` and ``loss.lambda_kd`` 0 (and the cell head's
    ``loss.token_ref`` 0); the token branch keeps its initial weights (it stays in the model,
    so the second stage's ``train.load_from`` finds every weight)."""
    return loss.lambda_token > 0 or (loss.dwbd and loss.lambda_kd > 0) or loss.token_ref > 0


def build_training_task(config: Config, data_root: str | Path) -> TrainingTask:
    """Tokenizer, datasets, a fresh SimVG (pretrained encoder) and its DETR/DWBD loss."""
    quiet_transformers()
    tokenizer = load_tokenizer(tokenizer_source(config))
    train_set, val_set = build_datasets(config, data_root, tokenizer)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, len(tokenizer))
    branches = ("token", "decoder") if config.model.head.use_decoder else ("token",)
    token_trained = token_branch_trained(config.loss)
    if not token_trained and config.train.best_metric in ("first", "token"):
        raise ValueError(f"no loss trains the token branch (loss.lambda_token, loss.lambda_kd and loss.token_ref are "
                         f"0), so its accuracy cannot pick the best checkpoint; set train.best_metric to decoder "
                         f"(or mean), not {config.train.best_metric}")  # fmt: skip
    if not token_trained and not config.model.head.use_decoder:
        raise ValueError("no loss trains the token branch and the model has no decoder branch: nothing would learn")
    return TrainingTask(
        config=config,
        module=GroundingLoss(model, build_criterion(config.model, config.loss), build_auxiliary_losses(model, config, tokenizer, train_set.records)),
        export_model=model,
        backbone_config=model.encoder.backbone_config(),
        tokenizer=tokenizer,
        train_dataset=train_set,
        val_dataset=val_set,
        eval_branches=branches,
        find_unused_parameters=not token_trained,
    )
