import pytest
import torch
import torch.nn as nn

from distill.losses import kd_loss
from distill.takfl import (
    heuristic_lambdas,
    merge_task_vectors,
    select_lambdas,
    self_regularised_kd_loss,
    task_vector,
    tune_lambdas,
    uniform_lambdas,
)


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(2, generator=g, dtype=torch.float64),
        "count": torch.tensor(seed),
    }


def test_task_vector_skips_non_float_entries_and_checks_keys():
    start, end = _state(0), _state(1)
    tau = task_vector(start, end)
    assert set(tau) == {"w", "b"}
    assert torch.equal(tau["w"], end["w"] - start["w"])

    with pytest.raises(ValueError, match="'b'"):
        task_vector(start, {**end, "b": torch.zeros(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="'count'"):
        task_vector(start, {k: v for k, v in end.items() if k != "count"})


def test_merge_is_start_plus_weighted_task_vectors():
    start = _state(0)
    taus = [task_vector(start, _state(seed)) for seed in (1, 2, 3)]
    lambdas = [0.5, -0.25, 2.0]
    merged = merge_task_vectors(start, taus, lambdas)
    for key in ("w", "b"):
        expected = start[key] + 0.5 * taus[0][key] - 0.25 * taus[1][key] + 2.0 * taus[2][key]
        # The same sum, up to the order (and fused multiply-adds) of a float64 kernel.
        assert torch.allclose(merged[key], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(merged["count"], start["count"])
    assert merged["count"] is not start["count"]

    # lambda 1 for one vector recovers that distilled state
    one_hot = merge_task_vectors(start, taus, [0.0, 1.0, 0.0])
    assert torch.allclose(one_hot["w"], _state(2)["w"])

    with pytest.raises(ValueError):
        merge_task_vectors(start, taus, [1.0, 1.0])


def test_merge_is_differentiable_in_lambda():
    start = _state(0)
    taus = [task_vector(start, _state(1)), task_vector(start, _state(2))]
    lambdas = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    merge_task_vectors(start, taus, lambdas)["w"].sum().backward()
    assert torch.allclose(lambdas.grad, torch.stack([taus[0]["w"].sum(), taus[1]["w"].sum()]))


def test_uniform_lambdas():
    assert uniform_lambdas(4) == [0.25] * 4
    with pytest.raises(ValueError):
        uniform_lambdas(0)


def test_select_lambdas_picks_the_best_candidate():
    start = _state(0)
    taus = [task_vector(start, _state(1)), task_vector(start, _state(2))]
    target = merge_task_vectors(start, taus, [0.2, 0.8])

    def evaluate(state):  # higher is better: negative distance to the target weights
        return -float((state["w"] - target["w"]).norm())

    candidates = [[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]
    best, scores = select_lambdas(start, taus, candidates, evaluate)
    assert best == [0.2, 0.8]
    assert len(scores) == 3 and max(scores) == scores[1] == pytest.approx(0.0)


def test_tune_lambdas_moves_towards_the_useful_task_vector():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    start = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    true_w = torch.randn(1, 4)
    useful = {"0.weight": true_w.clone()}
    useless = {"0.weight": torch.randn(1, 4)}
    before = model[0].weight.clone()

    data = [torch.randn(16, 4) for _ in range(4)]
    batches = [(x, x @ true_w.T) for x in data]

    def loss_fn(merged_model, batch):
        x, y = batch
        return ((merged_model(x) - y) ** 2).mean()

    lambdas = tune_lambdas(model, start, [useless, useful], loss_fn, batches, steps=40, lr=0.1)
    assert lambdas.shape == (2,)
    assert torch.allclose(lambdas.sum(), torch.tensor(1.0))
    assert lambdas[1] > 0.8
    assert torch.equal(model[0].weight, before)  # the model itself is untouched


def test_tune_lambdas_with_batchnorm_leaves_everything_untouched():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    taus = [
        task_vector(start, {k: v + 0.1 if v.is_floating_point() else v for k, v in start.items()})
        for _ in range(2)
    ]
    batches = [(torch.randn(8, 3), torch.randn(8, 1))]
    for mode in (model.train, model.eval):
        mode()
        tune_lambdas(model, start, taus, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batches, 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    with pytest.raises(ValueError):
        tune_lambdas(model, start, taus, lambda m, b: m(b).sum(), [], 1)


def test_self_regularised_kd_loss_is_the_papers():
    s, t, s0 = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    # T^2 KL to the teacher at T = 3, plus 0.01 T_self^2 KL to the start predictions at T_self = 20.
    expected = kd_loss(s, t, 3.0) + 0.01 * kd_loss(s, s0, 20.0)
    assert torch.allclose(self_regularised_kd_loss(s, t, s0), expected)
    assert torch.allclose(self_regularised_kd_loss(s, t, s0, 2.0, 10.0, 0.5), kd_loss(s, t, 2.0) + 0.5 * kd_loss(s, s0, 10.0))
    assert self_regularised_kd_loss(s, s.clone(), s.clone()).abs() < 1e-6


def test_self_regularisation_is_zero_at_the_start_weights():
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    at_start = self_regularised_kd_loss(s, t, s.detach().clone(), self_weight=0.01)
    at_start.backward()
    grad = s.grad.clone()
    s.grad = None
    kd_loss(s, t, 3.0).backward()
    assert torch.allclose(at_start, kd_loss(s, t, 3.0), atol=1e-6)
    assert torch.allclose(grad, s.grad, atol=1e-7)  # and so is its gradient


def test_self_regularisation_pulls_towards_the_start_predictions():
    torch.manual_seed(0)
    start, teacher = torch.randn(8, 5), torch.randn(8, 5)
    kept = []
    for weight in (0.0, 1.0):
        s = start.clone().requires_grad_()
        optimizer = torch.optim.SGD([s], lr=0.5)
        for _ in range(50):
            optimizer.zero_grad()
            self_regularised_kd_loss(s, teacher, start, self_weight=weight).backward()
            optimizer.step()
        kept.append(kd_loss(s.detach(), start, 20.0))
    assert kept[1] < kept[0]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_heuristic_lambda_candidates_lie_on_the_simplex(k):
    candidates = heuristic_lambdas(k, per_exponent=6, seed=3)
    assert len(candidates) == 1 + 3 * 6
    assert candidates[0] == uniform_lambdas(k)
    for lams in candidates:
        assert len(lams) == k and min(lams) >= 0 and abs(sum(lams) - 1) < 1e-9
    assert heuristic_lambdas(k, 6, seed=3) == candidates  # deterministic per seed
    if k > 1:
        assert heuristic_lambdas(k, 6, seed=4) != candidates
        # From spread-out weights to nearly one-hot ones (the higher exponents).
        assert max(max(lams) for lams in candidates[13:]) > 0.99


def test_merging_identical_task_vectors_on_the_simplex_gives_that_vector():
    start = _state(0)
    tau = task_vector(start, _state(1))
    for lams in heuristic_lambdas(3, per_exponent=4, seed=0):
        merged = merge_task_vectors(start, [tau, tau, tau], lams)
        for key in tau:
            assert torch.allclose(merged[key], start[key] + tau[key], atol=1e-12)
