import pytest
import torch
import torch.nn as nn

from distill.hooks import FeatureRecorder, get_module


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        nn.Linear(8, 3),
    )


def test_recorder_captures_outputs_of_named_modules():
    model = _model()
    x = torch.randn(2, 4)
    with FeatureRecorder(model, ["0", "0.0", "1"]) as rec:
        out = model(x)
    hidden = model[0][0](x)
    assert torch.allclose(rec.features["0.0"], hidden)
    assert torch.allclose(rec.features["0"], hidden.relu())
    assert torch.equal(rec.features["1"], out)


def test_recorded_features_keep_the_graph():
    model = _model()
    with FeatureRecorder(model, ["0"]) as rec:
        model(torch.randn(2, 4))
    rec.features["0"].sum().backward()
    assert model[0][0].weight.grad is not None


def test_hooks_are_removed_on_exit():
    model = _model()
    with FeatureRecorder(model, ["0", "1"]) as rec:
        model(torch.randn(2, 4))
        assert len(model[1]._forward_hooks) == 1
    first = rec.features["1"]
    assert len(model[0]._forward_hooks) == 0 and len(model[1]._forward_hooks) == 0
    model(torch.randn(2, 4))
    assert rec.features["1"] is first


def test_unknown_name_suggests_close_matches():
    model = nn.Module()
    model.block1 = nn.Linear(2, 2)
    model.block2 = nn.Linear(2, 2)
    with pytest.raises(KeyError) as err:
        FeatureRecorder(model, ["blok1"])
    assert "'blok1'" in str(err.value) and "'block1'" in str(err.value)
    assert get_module(model, "block2") is model.block2
    assert get_module(model, "") is model
