import pytest
import torch
from torch import nn

from distill.cheap_conv import convert_convs
from distill.hints import fit_hints, hint_loss


class TwoStage(nn.Module):
    """A tiny conv stem returning both stage outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x):
        first = self.a(x)
        return [first, self.b(first)]


def test_hint_loss_is_relative_squared_error():
    t = [torch.randn(2, 4, 3, 3), torch.randn(2, 8)]
    assert hint_loss([x.clone() for x in t], t) == 0
    assert torch.isclose(hint_loss([torch.zeros_like(x) for x in t], t), torch.tensor(1.0))
    # Scaling both sides leaves it unchanged: every pair counts the same whatever its magnitude.
    s = [torch.randn_like(x) for x in t]
    assert torch.isclose(hint_loss([10 * x for x in s], [10 * x for x in t]), hint_loss(s, t))


def test_hint_loss_names_the_mismatched_feature():
    with pytest.raises(ValueError, match="hint feature 1"):
        hint_loss([torch.zeros(2, 3), torch.zeros(2, 4)], [torch.zeros(2, 3), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="equally many"):
        hint_loss([torch.zeros(2)], [])


def test_fit_hints_makes_a_cheap_student_approach_its_teacher():
    torch.manual_seed(0)
    teacher = TwoStage().eval()
    student = TwoStage()
    assert convert_convs(student, "DConv") == ["a.0", "b.0"]
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = torch.randn(64, 3, 16, 16)
    batches = (data[torch.randint(0, 64, (16,))] for _ in range(200))
    losses = fit_hints(student, teacher, batches, steps=200, lr=5e-3)
    assert len(losses) == 200
    student.eval()
    with torch.no_grad():
        final = float(hint_loss(student(data), teacher(data)))
    assert final < 0.5 * losses[0]
    # The teacher is frozen: same weights and BN statistics, back in its own mode.
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_fit_hints_says_when_inputs_run_out():
    with pytest.raises(ValueError, match="ran out after 3 of 5"):
        fit_hints(TwoStage(), TwoStage(), [torch.randn(2, 3, 8, 8)] * 3, steps=5)
