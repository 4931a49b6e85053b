"""Before a grounding run: train the hybrid encoder's fresh visual stem alone to classify every
annotated object of the training images (``train.stem_pretrain_steps``).

The stem starts from scratch, and inside the full model it learns shapes slowly: on SynthRef
the referred object's category loss was still at 0.77 after the 20-minute run, and phrases
that name a shape were the ones the teacher missed most. Trained alone on the same images,
with a linear classifier on its last stage at each object's centre cell, it tells the shapes
apart within a few hundred batches (a batch costs a fraction of a full step: no transformer).
The classifier is dropped afterwards; the grounding run then starts from this stem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from simvg.config import Config
from simvg.data.dataset import Collator, GroundingDataset, StepSampler
from simvg.engine.optim import autocast, resolve_amp
from simvg.models import SimVG
from simvg.models.category import CategoryLoss, scene_object_cells


@dataclass
class StemPretraining:
    """What the pre-phase did: loss per step (cross-entropy over the categories) and its
    wall-clock seconds."""

    losses: list[float]
    seconds: float


def pretrain_stem(model: SimVG, train_set: GroundingDataset, config: Config, device: torch.device,
                  pad_token_id: int, log: bool = True) -> StemPretraining:  # fmt: skip
    """Train ``model.encoder.stem`` for ``config.train.stem_pretrain_steps`` batches of
    ``train.batch_size`` training images (AdamW at ``train.stem_pretrain_lr``, the run's mixed
    precision). Needs a hybrid encoder and a training set that carries every object
    (``GroundingDataset(scene_objects=True)``). The batches and the classifier depend only on
    ``train.seed``; in a distributed run every process trains its own copy on the same batches
    and DDP then starts all of them from rank 0's weights. The pre-phase is not counted against
    ``train.max_minutes`` (that budget is the grounding run's)."""
    steps = config.train.stem_pretrain_steps
    stem = getattr(model.encoder, "stem", None)
    if stem is None:
        raise ValueError(f"train.stem_pretrain_steps needs the hybrid encoder's visual stem, not "
                         f"'{config.model.encoder.type}'; set it to 0")  # fmt: skip
    if not train_set.scene_objects:
        raise ValueError("train.stem_pretrain_steps needs a training set built with scene_objects=True")
    categories = sorted({c for r in train_set.records for _, c in r.scene_objects() or []}, key=str)
    if not categories:
        raise ValueError(
            f"train.stem_pretrain_steps needs records that list their image's objects (SynthRef 'objects', the "
            f"refer layout's COCO annotations), but no '{config.data.train_split}' record of dataset "
            f"'{config.data.dataset}' does; set it to 0"
        )
    generator = torch.Generator().manual_seed(config.train.seed + 2)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        # The throw-away classifier is drawn from its own generator, and building it does not
        # advance the run's global random state.
        category = CategoryLoss(stem.out_channels, categories)
        bound = 1 / stem.out_channels**0.5
        category.classifier.weight.uniform_(-bound, bound, generator=generator)
        category.classifier.bias.zero_()
    stem.to(device).train()
    category.to(device)
    optimizer = torch.optim.AdamW([*stem.parameters(), *category.parameters()], lr=config.train.stem_pretrain_lr,
                                  weight_decay=0.0)  # fmt: skip
    sampler = StepSampler(len(train_set), config.train.batch_size, steps, seed=config.train.seed + 2)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.data.num_workers,
                        collate_fn=Collator(pad_token_id), generator=torch.Generator())  # fmt: skip
    amp = resolve_amp(config.train.amp, device)
    started = time.perf_counter()
    losses = []
    for batch in loader:
        with autocast(device, amp):
            features = stem(model.encoder.normalize(batch.images.to(device)))[-1]  # (B, C, h, w)
            rows, cells, names = scene_object_cells(batch.meta, (features.shape[2], features.shape[3]))
            loss = category(features.flatten(2).transpose(1, 2), cells.to(device), names, rows.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    if log and losses:
        print(f"stem pretraining: {steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({seconds:.0f} s)",
              flush=True)  # fmt: skip
    return StemPretraining(losses, seconds)
