"""ONE: On-the-fly Native Ensemble (Lan, Zhu & Gong, NeurIPS 2018).

One network with shared low-level layers and K branches (copies of the last stage plus
their own head). A gate computed from the branches' shared input weights the branch
outputs into an ensemble teacher, which is distilled back into every branch during the
same training run. At deploy time keep a single branch (cheap) or the whole ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from distill.losses import kd_loss

BranchOutput = Tensor | dict[str, Tensor]


@dataclass
class ONEOutput:
    """What ``ONE.forward`` returns.

    branches: the K branch outputs (only the selected one in single-branch mode).
    gate: (B, K) branch weights summing to 1 per sample; None in single-branch mode.
    ensemble: the gate-weighted sum of the branch outputs (per key for dict outputs), or
        the selected branch's output in single-branch mode.
    """

    branches: list[BranchOutput]
    gate: Tensor | None
    ensemble: BranchOutput


def _pool(x: Tensor) -> Tensor:
    """Global average pool to (B, C): (B, C) as is, (B, N, C) over N, (B, C, H, W) over H, W."""
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    raise ValueError(f"ONE gate input must be (B, C), (B, N, C) or (B, C, H, W), got {x.shape}")


def _weighted_sum(gate: Tensor, outputs: list[Tensor]) -> Tensor:
    stacked = torch.stack(outputs, dim=1)  # (B, K, ...)
    weights = gate.reshape(*gate.shape, *([1] * (stacked.dim() - 2)))
    return (weights.to(stacked.dtype) * stacked).sum(dim=1)


def gated_ensemble(gate: Tensor, outputs: list[BranchOutput]) -> BranchOutput:
    """Σ_k gate[:, k] * outputs[k]; gate: (B, K); outputs: K tensors (B, ...) or K dicts.

    For dict outputs the sum is taken per key (e.g. "logits" and "boxes").
    """
    if isinstance(outputs[0], Mapping):
        return {key: _weighted_sum(gate, [out[key] for out in outputs]) for key in outputs[0]}
    if isinstance(outputs[0], Tensor):
        return _weighted_sum(gate, outputs)
    raise TypeError(f"branch outputs must be Tensors or dicts of Tensors, got {type(outputs[0])}")


class ONE(nn.Module):
    """K branches sharing one input, plus the ONE gate.

    Args:
        branch_factory: called K times to build the branches; each maps the shared input
            to a Tensor (e.g. logits (B, C)) or a dict of Tensors with a leading batch dim.
        num_branches: K (3 in the paper).
        in_features: channel count C of the shared input.

    The shared input x may be (B, C) features, (B, N, C) tokens (the gate pools the mean
    over N) or (B, C, H, W) maps (the gate pools the mean over H, W). The gate is
    pool -> Linear(C, K) -> BatchNorm1d(K) -> ReLU -> softmax over the K branches (in
    training mode its BatchNorm needs batches of more than one sample).

    Set ``branch_index`` (attribute, or the forward argument) to run only that branch,
    e.g. after training to deploy the cheap single-branch model; None runs the ensemble.
    """

    def __init__(
        self, branch_factory: Callable[[], nn.Module], num_branches: int = 3, *, in_features: int
    ):
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        self.branches = nn.ModuleList(branch_factory() for _ in range(num_branches))
        self.gate = nn.Sequential(
            nn.Linear(in_features, num_branches),
            nn.BatchNorm1d(num_branches),
            nn.ReLU(),
        )
        self.branch_index: int | None = None

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def gate_weights(self, x: Tensor) -> Tensor:
        """x: shared input (see class docstring) -> (B, K) softmax weights."""
        return F.softmax(self.gate(_pool(x)), dim=-1)

    def forward(self, x: Tensor, branch_index: int | None = None) -> ONEOutput:
        """Run the ensemble on the shared input x, or only one branch.

        The branch run alone is ``branch_index`` if given, else ``self.branch_index``; when
        both are None all branches and the gate run.
        """
        index = self.branch_index if branch_index is None else branch_index
        if index is not None:
            if not -self.num_branches <= index < self.num_branches:
                raise IndexError(f"branch_index {index} out of range for {self.num_branches}")
            out = self.branches[index](x)
            return ONEOutput(branches=[out], gate=None, ensemble=out)
        outputs = [branch(x) for branch in self.branches]
        gate = self.gate_weights(x)
        return ONEOutput(branches=outputs, gate=gate, ensemble=gated_ensemble(gate, outputs))


def one_kd_loss(branch_logits: list[Tensor], ensemble_logits: Tensor, temperature: float = 3.0) -> Tensor:
    """ONE's distillation term: T^2 * Σ_i KL(softmax(ens/T) || softmax(branch_i/T)).

    The gated ensemble teaches every branch; it is a detached target here. Any distribution
    works, not only class logits: e.g. each branch's attention logits over image cells, with
    masked cells allowed (:func:`distill.losses.kd_loss`).

    Args:
        branch_logits: K tensors (B, C).
        ensemble_logits: (B, C) the gate-weighted sum of the branch logits.
        temperature: T (3 in the paper).

    Returns:
        Scalar, each KL with "batchmean" reduction (unweighted: the ramp-up is the caller's).
    """
    return sum(kd_loss(logits, ensemble_logits, temperature) for logits in branch_logits)


def one_loss(
    branch_logits: list[Tensor],
    ensemble_logits: Tensor,
    targets: Tensor,
    temperature: float = 3.0,
    kd_weight: float = 1.0,
) -> dict[str, Tensor]:
    """ONE training loss for classification, split into its named parts (sum them for the total).

    Args:
        branch_logits: K tensors (B, C).
        ensemble_logits: (B, C) gate-weighted logits; not detached for the CE term (that
            CE is what trains the gate), detached as the KL target.
        targets: (B,) class indices.
        temperature: T of the distillation term (3 in the paper).
        kd_weight: weight of the distillation term, e.g. ``sigmoid_rampup(epoch, 80)``.

    Returns:
        {"loss_one_ce_branches": Σ_i CE(branch_i, y),
         "loss_one_ce_ensemble": CE(ensemble, y),
         "loss_one_kd": kd_weight * :func:`one_kd_loss`}.
    """
    ce_branches = sum(F.cross_entropy(logits, targets) for logits in branch_logits)
    return {
        "loss_one_ce_branches": ce_branches,
        "loss_one_ce_ensemble": F.cross_entropy(ensemble_logits, targets),
        "loss_one_kd": one_kd_loss(branch_logits, ensemble_logits, temperature) * kd_weight,
    }


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1]: ~0.0067 at 0, 1 at the end.

    The ramp-up of the mean-teacher and ONE code (ONE ramps over the first 80 epochs);
    returns 1.0 for length <= 0.
    """
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
