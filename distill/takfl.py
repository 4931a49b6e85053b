"""TAKFL-style task arithmetic over state dicts (Morafah et al., NeurIPS 2024).

Distil the student separately from each teacher j, starting every time from the same
weights θ₀, giving θ_j (each run: ``self_regularised_kd_loss``, no labels). The task vector
τ_j = θ_j − θ₀ holds what teacher j taught; the merged student is θ₀ + Σ_j λ_j τ_j, with λ on
the simplex chosen on labelled validation data: uniform, the best of the reference code's
heuristic candidates (``heuristic_lambdas`` + ``select_lambdas``), or tuned by gradient
descent (``tune_lambdas``).

Only floating-point entries take part in the arithmetic; the others (e.g. BatchNorm's
``num_batches_tracked``) are copied from the start state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from distill.losses import kd_loss

StateDict = Mapping[str, Tensor]


def _check_same_keys(reference: StateDict, other: StateDict, what: str) -> None:
    missing = [k for k in reference if k not in other]
    extra = [k for k in other if k not in reference]
    if missing or extra:
        key = (missing or extra)[0]
        side = "missing from" if missing else "unexpected in"
        raise ValueError(f"key {key!r} {side} {what} ({len(missing)} missing, {len(extra)} extra)")


def task_vector(start_state: StateDict, distilled_state: StateDict) -> dict[str, Tensor]:
    """τ = θ_distilled − θ_start for every floating-point entry (non-float ones are left out).

    Raises:
        ValueError: naming the first key missing from either state or whose shapes differ.
    """
    _check_same_keys(start_state, distilled_state, "distilled_state")
    vector = {}
    for key, start in start_state.items():
        end = distilled_state[key]
        if start.shape != end.shape:
            raise ValueError(
                f"shape mismatch for key {key!r}: {tuple(start.shape)} vs {tuple(end.shape)}"
            )
        if start.is_floating_point():
            vector[key] = end.detach() - start.detach()
    return vector


def merge_task_vectors(
    start_state: StateDict, task_vectors: Sequence[StateDict], lambdas: Sequence[float] | Tensor
) -> dict[str, Tensor]:
    """θ₀ + Σ_j λ_j τ_j for every floating-point entry; other entries are cloned from θ₀.

    Args:
        start_state: θ₀.
        task_vectors: K dicts from ``task_vector``.
        lambdas: K coefficients (a Tensor may require grad: the result is differentiable).

    Returns:
        A new state dict with the keys of ``start_state``.
    """
    if len(lambdas) != len(task_vectors):
        raise ValueError(f"got {len(lambdas)} lambdas for {len(task_vectors)} task vectors")
    float_keys = {k for k, v in start_state.items() if v.is_floating_point()}
    for j, vector in enumerate(task_vectors):
        if set(vector) != float_keys:
            key = sorted(set(vector) ^ float_keys)[0]
            raise ValueError(f"task vector {j} does not match the start state at key {key!r}")

    merged = {}
    for key, start in start_state.items():
        if key in float_keys:
            value = start
            for lam, vector in zip(lambdas, task_vectors):
                value = value + lam * vector[key]
            merged[key] = value
        else:
            merged[key] = start.clone()
    return merged


def uniform_lambdas(k: int) -> list[float]:
    """[1/k] * k: the plain average of the task vectors."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [1.0 / k] * k


def select_lambdas(
    start_state: StateDict,
    task_vectors: Sequence[StateDict],
    candidates: Sequence[Sequence[float]],
    evaluate: Callable[[dict[str, Tensor]], float],
) -> tuple[list[float], list[float]]:
    """Pick the candidate λ whose merged state scores best.

    Args:
        evaluate: maps a merged state dict to a score, higher is better (e.g. validation
            accuracy after ``model.load_state_dict``).

    Returns:
        (best candidate, the score of every candidate in order).
    """
    if not candidates:
        raise ValueError("select_lambdas needs at least one candidate")
    scores = [
        float(evaluate(merge_task_vectors(start_state, task_vectors, list(lams))))
        for lams in candidates
    ]
    best = max(range(len(scores)), key=scores.__getitem__)
    return [float(v) for v in candidates[best]], scores


def tune_lambdas(
    model: nn.Module,
    start_state: StateDict,
    task_vectors: Sequence[StateDict],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterable[Any],
    steps: int,
    lr: float = 0.05,
) -> Tensor:
    """Learn λ = softmax(w) (w initialised to zeros, i.e. uniform λ) by minimising the task loss.

    Every step merges θ₀ + Σ λ_j τ_j and calls ``loss_fn(merged_model, batch)``, where
    ``merged_model`` is a thin module whose forward runs ``model`` with the merged weights
    through ``torch.func.functional_call``; ``model`` itself is never modified. ``batches``
    is cycled through until ``steps`` Adam steps have been taken. The model's train/eval
    mode is used as is (eval is usual: BatchNorm then uses the merged running statistics).
    Gradients reach λ through the merged parameters only, not through merged buffers.

    Returns:
        λ: (K,) detached tensor, non-negative and summing to 1.
    """
    first = next(iter(start_state.values()))
    logits = torch.zeros(len(task_vectors), device=first.device, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    merged_model = _MergedModel(model)
    param_names = {name for name, _ in model.named_parameters()}

    step = 0
    while step < steps:
        progressed = False
        for batch in batches:
            if step >= steps:
                break
            merged = merge_task_vectors(start_state, task_vectors, F.softmax(logits, dim=0))
            # Buffers (BN running stats) are merged too but carry no gradient: batch_norm
            # refuses running stats that require grad, and train mode updates them in place.
            merged_model.state = {
                k: v if k in param_names else v.detach() for k, v in merged.items()
            }
            loss = loss_fn(merged_model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            progressed = True
        if not progressed:
            raise ValueError("tune_lambdas: batches is empty (or an exhausted iterator)")
    merged_model.state = {}
    return F.softmax(logits.detach(), dim=0)


class _MergedModel(nn.Module):
    """Calls a model with substitute weights without registering or editing it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # A list hides the model from this module's parameters and state dict.
        self._wrapped = [model]
        self.state: dict[str, Tensor] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._wrapped[0], self.state, args, kwargs, strict=False)


def self_regularised_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    start_logits: Tensor,
    temperature: float = 3.0,
    self_temperature: float = 20.0,
    self_weight: float = 0.01,
    kd: Callable[[Tensor, Tensor, float], Tensor] = kd_loss,
) -> Tensor:
    """TAKFL's per-teacher distillation loss for one student.

    T^2 · KL(softmax(t/T) || softmax(s/T))
      + self_weight · T_self^2 · KL(softmax(s0/T_self) || softmax(s/T_self)),

    where s0 are the student's own predictions at its start weights θ₀ (the second term keeps
    it from drifting away from what it already knew). Defaults are the reference code's
    published runs: T = 3, T_self = 20, weight 0.01. KLs use "batchmean"; teacher and start
    logits are detached; masked classes are allowed (:func:`distill.losses.kd_loss`).

    Args:
        student_logits, teacher_logits, start_logits: (B, C), or what ``kd`` reads.
        kd: the KD loss both terms use, called as ``kd(student, target, T)``:
            :func:`~distill.losses.kd_loss`, or e.g. :func:`~distill.losses.joint_kd_loss` for
            predictions made independently at several positions (B, N, C).
    """
    return kd(student_logits, teacher_logits, temperature) + self_weight * kd(
        student_logits, start_logits, self_temperature
    )


# The reference code's heuristic raises Beta(1, 100) draws to these powers before normalising:
# from spread-out weights (1) to nearly all weight on one task vector (10).
HEURISTIC_EXPONENTS = (1, 5, 10)


def heuristic_lambdas(k: int, per_exponent: int, seed: int = 0) -> list[list[float]]:
    """TAKFL's candidate λ: uniform, then ``per_exponent`` random points of the simplex for
    each of :data:`HEURISTIC_EXPONENTS` (Beta(1, 100) draws to that power, normalised).

    The reference code sorts each draw ascending, putting the largest weight on the last
    task vector (its teachers are ordered by size); these are left in draw order, so every
    teacher is as likely to get it. Deterministic for a given ``seed``.

    Returns:
        1 + 3 * per_exponent lists of k non-negative floats summing to 1 (up to rounding).
    """
    if k < 1 or per_exponent < 0:
        raise ValueError(f"heuristic_lambdas needs k >= 1 and per_exponent >= 0, got {k} and {per_exponent}")
    generator = torch.Generator().manual_seed(seed)
    candidates = [uniform_lambdas(k)]
    for exponent in HEURISTIC_EXPONENTS:
        for _ in range(per_exponent):
            # Beta(1, b) by its inverse CDF: 1 - (1 - u)^(1/b) for u uniform on [0, 1).
            u = torch.rand(k, generator=generator, dtype=torch.float64).clamp_min(1e-12)
            draw = (1.0 - (1.0 - u) ** (1.0 / 100.0)) ** exponent
            candidates.append((draw / draw.sum()).tolist())
    return candidates
