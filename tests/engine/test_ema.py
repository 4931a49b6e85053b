import pytest
import torch
from torch import nn

from simvg.engine.ema import ModelEma, ema_decay


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("running", torch.zeros(2))


def test_the_decay_warms_up_as_simvg_does():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 100_000) == 0.999


def test_the_average_follows_the_closed_form_and_copies_integer_buffers():
    model = Tiny()
    start = model.linear.weight.detach().clone()
    ema = ModelEma(model, 0.5)
    expected = start.clone()
    for update, value in enumerate([1.0, 3.0, -2.0]):
        with torch.no_grad():
            model.linear.weight.fill_(value)
            model.running.fill_(value)
            model.count.add_(1)
        ema.update(model, update)
        d = ema_decay(0.5, update)
        expected = d * expected + (1 - d) * value
    assert torch.allclose(ema.model.linear.weight, expected)
    assert int(ema.model.count) == 3  # copied, not averaged
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    # The trained model is untouched by the averaging.
    assert (model.linear.weight == -2.0).all()


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        ModelEma(Tiny(), 1.0)
