import pytest
import torch

from distill.cheap_conv import convert_convs, count_parameters
from distill.hooks import FeatureRecorder
from distill.wide_resnet import wide_resnet


# Counts printed by Moonshine's reference code for CIFAR-10 WRN-40-2 (parameters only).
@pytest.mark.parametrize(
    ("block", "block_type", "expected"),
    [("Conv", "basic", 2_243_546), ("DConv", "basic", 293_514), ("ConvB2", "bottle", 431_834)],
)
def test_wrn_40_2_parameter_counts_match_the_reference(block, block_type, expected):
    model = wide_resnet(40, 2, block, num_classes=10, block_type=block_type)
    assert count_parameters(model) == expected


def test_forward_gives_logits_and_three_stage_maps():
    model = wide_resnet(40, 2, "DConv")
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    model.eval()
    logits, features = model.forward_features(x)
    assert logits.shape == (2, 10)
    assert [tuple(f.shape) for f in features] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]
    assert torch.allclose(model(x), logits)


def test_stage_outputs_can_be_hooked_by_name():
    model = wide_resnet(16, 1, "Conv").eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureRecorder(model, ["block1", "block2", "block3"]) as rec:
        _, features = model.forward_features(x)
    for name, expected in zip(["block1", "block2", "block3"], features):
        assert torch.equal(rec.features[name], expected)


def test_converting_the_teacher_gives_the_student():
    # Moonshine keeps the stem conv full; convert_convs reaches it only if asked to.
    teacher = wide_resnet(40, 2, "Conv")
    names = convert_convs(teacher, "DConv", include=lambda name, conv: name != "conv1")
    assert len(names) == 36
    assert count_parameters(teacher) == 293_514
    assert teacher(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bottle_blocks_have_one_conv_and_the_forward_runs():
    model = wide_resnet(16, 2, "ConvB4", num_classes=100, block_type="Bottle")
    assert model.block1[0].conv2 is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("kwargs", [{"depth": 41}, {"block_type": "wide"}, {"block": "XConv"}])
def test_invalid_configurations_are_rejected(kwargs):
    args = {"depth": 16, "width": 1} | kwargs
    with pytest.raises(ValueError):
        wide_resnet(**args)
