import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.losses import kd_loss
from distill.one import ONE, one_kd_loss, one_loss, sigmoid_rampup


class CountingHead(nn.Module):
    calls = 0

    def __init__(self, dim: int = 8, classes: int = 5):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        CountingHead.calls += 1
        return self.fc(x)


class DictHead(nn.Module):
    """A grounding-style head on tokens: class logits and a sigmoid box per sample."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.cls = nn.Linear(dim, 2)
        self.box = nn.Linear(dim, 4)

    def forward(self, tokens):
        pooled = tokens.mean(1)
        return {"logits": self.cls(pooled), "boxes": self.box(pooled).sigmoid()}


def test_gate_sums_to_one_and_ensemble_is_the_gated_sum():
    model = ONE(CountingHead, num_branches=3, in_features=8)
    out = model(torch.randn(4, 8))
    assert out.gate.shape == (4, 3)
    assert torch.allclose(out.gate.sum(1), torch.ones(4))
    assert len(out.branches) == 3
    expected = sum(out.gate[:, k : k + 1] * out.branches[k] for k in range(3))
    assert torch.allclose(out.ensemble, expected, atol=1e-6)


def test_dict_outputs_are_combined_per_key_for_token_inputs():
    model = ONE(DictHead, num_branches=2, in_features=8)
    out = model(torch.randn(4, 6, 8))  # (B, N, C) tokens
    assert set(out.ensemble) == {"logits", "boxes"}
    for key in ("logits", "boxes"):
        expected = sum(out.gate[:, k : k + 1] * out.branches[k][key] for k in range(2))
        assert torch.allclose(out.ensemble[key], expected, atol=1e-6)


def test_gate_pools_feature_maps():
    model = ONE(lambda: nn.Conv2d(8, 3, 1), num_branches=3, in_features=8)
    x = torch.randn(2, 8, 5, 5)
    out = model(x)
    assert out.ensemble.shape == (2, 3, 5, 5)
    gate = F.softmax(model.gate(x.mean(dim=(2, 3))), dim=-1)
    assert torch.allclose(out.gate, gate)


def test_single_branch_deploy_mode_runs_one_branch():
    model = ONE(CountingHead, num_branches=3, in_features=8).eval()
    x = torch.randn(2, 8)
    model.branch_index = 1
    CountingHead.calls = 0
    out = model(x)
    assert CountingHead.calls == 1
    assert out.gate is None and len(out.branches) == 1
    assert torch.equal(out.ensemble, model.branches[1](x))
    assert torch.equal(model(x, branch_index=2).ensemble, model.branches[2](x))
    model.branch_index = None
    assert len(model(x).branches) == 3
    with pytest.raises(IndexError):
        model(x, branch_index=3)


def test_one_loss_parts():
    torch.manual_seed(0)
    branches = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    ensemble = torch.randn(4, 5, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3])
    parts = one_loss(branches, ensemble, targets, temperature=3.0, kd_weight=0.5)
    assert set(parts) == {"loss_one_ce_branches", "loss_one_ce_ensemble", "loss_one_kd"}

    ce = sum(F.cross_entropy(b, targets) for b in branches)
    assert torch.allclose(parts["loss_one_ce_branches"], ce)
    assert torch.allclose(parts["loss_one_ce_ensemble"], F.cross_entropy(ensemble, targets))
    p = F.softmax(ensemble / 3, dim=1)
    kl = sum((p * (p.log() - F.log_softmax(b / 3, dim=1))).sum(1).mean() for b in branches)
    assert torch.allclose(parts["loss_one_kd"], 0.5 * 9 * kl, atol=1e-6)

    parts["loss_one_kd"].backward()
    assert ensemble.grad is None  # the ensemble is a detached target in the KL
    assert all(b.grad is not None for b in branches)


def test_one_kd_is_zero_when_branches_agree_and_ensemble_ce_trains_the_gate():
    logits = torch.randn(3, 4)
    assert one_loss([logits, logits], logits, torch.tensor([0, 1, 2]))["loss_one_kd"].abs() < 1e-6

    model = ONE(CountingHead, num_branches=3, in_features=8)
    out = model(torch.randn(4, 8))
    loss = one_loss(out.branches, out.ensemble, torch.tensor([0, 1, 2, 3]))
    loss["loss_one_ce_ensemble"].backward()
    assert model.gate[0].weight.grad is not None


def test_sigmoid_rampup_endpoints():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0
    assert sigmoid_rampup(200, 80) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(e, 80) for e in range(81)]
    assert values == sorted(values)


def test_one_kd_loss_teaches_every_branch_from_the_detached_ensemble():
    branches = [torch.randn(4, 9, requires_grad=True) for _ in range(3)]
    gate = torch.softmax(torch.randn(4, 3), dim=-1)
    ensemble = sum(gate[:, k : k + 1] * branches[k] for k in range(3))  # ONE's teacher: gated logits
    loss = one_kd_loss(branches, ensemble, temperature=3.0)
    assert torch.allclose(loss, sum(kd_loss(b, ensemble, 3.0) for b in branches))
    loss.backward()
    # Only as a student does a branch get a gradient: the ensemble target is detached, so a
    # branch's gradient is its own T * (softmax(b/T) - softmax(ens/T)) / B, nothing through the gate.
    for b in branches:
        expected = 3.0 * (F.softmax(b / 3, dim=-1) - F.softmax(ensemble.detach() / 3, dim=-1)) / 4
        assert torch.allclose(b.grad, expected, atol=1e-6)


def test_one_kd_loss_over_cells_allows_masked_cells():
    lowest = torch.finfo(torch.float32).min
    mask = torch.tensor([True, False, True, True, False, True])
    branches = [torch.randn(2, 6).masked_fill(~mask, lowest) for _ in range(2)]
    ensemble = 0.5 * branches[0] + 0.5 * branches[1]  # the gated sum of masked logits
    loss = one_kd_loss(branches, ensemble)
    assert torch.isfinite(loss) and loss > 0
    assert one_kd_loss([ensemble, ensemble], ensemble).abs() < 1e-6
