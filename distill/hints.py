"""Hint training (FitNets, Romero et al., ICLR 2015): fit a student module's intermediate
features to a frozen teacher module's, before training the whole student on the task.

A cheap-convolution stem that starts from random weights learns slowly inside a full
distillation run (its gradient comes through every later layer); fitted first on the
teacher stem's own stage outputs, it hands the copied teacher layers features of the kind
they were trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


def hint_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Mean over feature pairs of mean((s - t)^2) / mean(t^2): each pair's squared error
    relative to the teacher feature's energy (0 = identical, 1 = as far as predicting zeros).

    Pairs must have the same shape (a student of different width needs a connector first).
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"need equally many features, got {len(student_features)} and {len(teacher_features)}")
    terms = []
    for index, (s, t) in enumerate(zip(student_features, teacher_features)):
        if s.shape != t.shape:
            raise ValueError(f"hint feature {index}: student shape {tuple(s.shape)} != teacher {tuple(t.shape)}")
        s, t = s.float(), t.float()
        terms.append((s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-8))
    return torch.stack(terms).mean()


def _as_list(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [features] if isinstance(features, Tensor) else list(features)


def fit_hints(
    student: nn.Module,
    teacher: nn.Module,
    inputs: Iterable[Tensor],
    steps: int,
    lr: float = 1e-3,
    warmup_steps: int = 20,
    autocast_dtype: torch.dtype | None = None,
) -> list[float]:
    """Train ``student`` so that ``student(x)`` matches ``teacher(x)`` (a tensor or a list of
    tensors of the same shapes) on the first ``steps`` batches of ``inputs``.

    AdamW at ``lr`` with linear warm-up and cosine decay; the teacher is frozen and run in
    eval mode, the student in train mode (then left in train mode). ``autocast_dtype``
    (e.g. torch.bfloat16) runs both forwards under autocast on the inputs' device.
    Returns the :func:`hint_loss` of every step.
    """
    if steps < 1:
        raise ValueError(f"hint steps must be >= 1, got {steps}")
    was_training = teacher.training
    teacher.eval()
    student.train()
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses: list[float] = []
    for step, x in enumerate(inputs):
        if step >= steps:
            break
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            with torch.no_grad():
                target = _as_list(teacher(x))
            loss = hint_loss(_as_list(student(x)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    if len(losses) < steps:
        raise ValueError(f"inputs ran out after {len(losses)} of {steps} hint steps")
    teacher.train(was_training)
    return losses
