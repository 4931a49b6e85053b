"""Before distillation: fit a student's fresh (cheap-convolution) stem to the teacher stem's
stage outputs on training images (``distill.stem_hint_steps``; distill.hints)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from distill.hints import fit_hints
from simvg.config import Config
from simvg.data.dataset import Collator, GroundingDataset, StepSampler
from simvg.engine.optim import resolve_amp
from simvg.models import SimVG


def needs_stem_hints(student_config: Config, teacher_config: Config) -> bool:
    """Whether ``distill.stem_hint_steps`` applies: a stem copied from the teacher (same
    convolution blocks, ``init_from_teacher``) already matches it and is left alone."""
    copied = (
        student_config.distill.init_from_teacher
        and student_config.model.encoder.stem_conv == teacher_config.model.encoder.stem_conv
        and student_config.model.encoder.stem_channels == teacher_config.model.encoder.stem_channels
    )
    return student_config.distill.stem_hint_steps > 0 and not copied


def fit_student_stem(
    student: SimVG,
    teacher: SimVG,
    train_set: GroundingDataset,
    config: Config,
    device: torch.device,
    pad_token_id: int,
    log: bool = True,
) -> list[float]:
    """Train ``student.encoder.stem`` for ``config.distill.stem_hint_steps`` batches so that
    every stage output matches the teacher stem's (same channels required); returns the
    hint loss per step. Every process of a distributed run does the same (same batches, same
    seed), and rank 0's result is broadcast so that they start distillation identical."""
    d = config.distill
    student_stem = getattr(student.encoder, "stem", None)
    teacher_stem = getattr(teacher.encoder, "stem", None)
    if student_stem is None or teacher_stem is None:
        raise ValueError("distill.stem_hint_steps needs a hybrid (conv stem) teacher and student")
    if student_stem.channels != teacher_stem.channels:
        raise ValueError(
            f"distill.stem_hint_steps needs the teacher's stem widths: student {student_stem.channels}, "
            f"teacher {teacher_stem.channels} (leave distill.stem_channels unset)"
        )
    student_stem.to(device)
    teacher_stem.to(device)
    sampler = StepSampler(len(train_set), config.train.batch_size, d.stem_hint_steps, seed=config.train.seed + 1)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.data.num_workers,
                        collate_fn=Collator(pad_token_id), generator=torch.Generator())  # fmt: skip
    inputs = (teacher.encoder.normalize(batch.images.to(device)) for batch in loader)
    amp = resolve_amp(config.train.amp, device)
    started = time.perf_counter()
    losses = fit_hints(student_stem, teacher_stem, inputs, d.stem_hint_steps, lr=d.stem_hint_lr,
                       autocast_dtype=amp if amp == torch.bfloat16 else None)  # fmt: skip
    if dist.is_available() and dist.is_initialized():
        for tensor in student_stem.state_dict().values():
            dist.broadcast(tensor, 0)
    if log:
        print(f"stem hint: {d.stem_hint_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    return losses
