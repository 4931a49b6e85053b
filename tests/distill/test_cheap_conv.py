import pytest
import torch
import torch.nn as nn

from distill.cheap_conv import (
    BLOCK_PATTERNS,
    BottleneckConv,
    SeparableConv,
    build_cheap_conv,
    convert_convs,
    count_parameters,
)

NAMES = [
    "Conv",
    "DConv",
    "DConvG2",
    "DConvG4",
    "DConvA2",
    "DConvA4",
    "ConvB2",
    "ConvB4",
    "DConvB2",
    "DConvB4",
    "G2B2",
    "G4B2",
    "G2B4",
    "A2B2",
    "A4B2",
    "A2B4",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_block_keeps_the_output_shape_of_a_3x3_conv(name, stride):
    x = torch.randn(2, 16, 9, 9)
    reference = nn.Conv2d(16, 32, 3, stride, padding=1)
    block = build_cheap_conv(name, 16, 32, stride=stride)
    assert block(x).shape == reference(x).shape


@pytest.mark.parametrize("name", [n for n in NAMES if n != "Conv"])
def test_cheap_blocks_are_cheaper_than_a_full_conv(name):
    full = count_parameters(build_cheap_conv("Conv", 64, 64))
    assert count_parameters(build_cheap_conv(name, 64, 64)) < full


def test_block_structure_follows_the_names():
    dconv = build_cheap_conv("DConv", 32, 64)
    assert isinstance(dconv, SeparableConv) and dconv.conv.groups == 32
    assert build_cheap_conv("DConvG4", 32, 64).conv.groups == 8  # 4 channels per group
    assert build_cheap_conv("DConvA4", 32, 64).conv.groups == 4  # 4 groups

    convb = build_cheap_conv("ConvB2", 32, 64)
    assert isinstance(convb, BottleneckConv)
    assert convb.down.out_channels == 32 and convb.conv.groups == 1
    assert convb.up.out_channels == 64
    assert build_cheap_conv("DConvB4", 32, 64).conv.groups == 16
    assert build_cheap_conv("G4B2", 32, 64).conv.groups == 8
    assert build_cheap_conv("A4B2", 32, 64).conv.groups == 4


def test_bias_goes_on_the_last_conv_only():
    block = build_cheap_conv("ConvB2", 8, 8, bias=True)
    assert block.up.bias is not None and block.down.bias is None and block.conv.bias is None
    assert build_cheap_conv("Conv", 8, 8).conv.bias is None


@pytest.mark.parametrize("bad", ["Foo", "conv", "DConvX", "ConvB", "ConvB0", "G4B", "DConvA2x", ""])
def test_unknown_names_are_rejected_with_the_valid_patterns(bad):
    with pytest.raises(ValueError) as err:
        build_cheap_conv(bad, 16, 16)
    assert repr(bad) in str(err.value)
    assert all(pattern in str(err.value) for pattern in BLOCK_PATTERNS)


@pytest.mark.parametrize(
    ("name", "cin", "cout"),
    [("DConvA4", 6, 8), ("DConvG4", 6, 8), ("ConvB4", 8, 6), ("G4B2", 8, 12), ("A4B2", 8, 12)],
)
def test_indivisible_channel_counts_are_rejected(name, cin, cout):
    with pytest.raises(ValueError, match="not divisible"):
        build_cheap_conv(name, cin, cout)


def _toy_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # 0: replaced (has a bias)
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),  # 3.0: replaced
            nn.Conv2d(32, 32, 1),  # 3.1: 1x1, kept
            nn.Conv2d(32, 32, 3, padding=1, groups=32),  # 3.2: depthwise, kept
            nn.Conv2d(32, 32, 5, padding=2),  # 3.3: 5x5, kept
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


def test_convert_convs_replaces_only_full_3x3_convs():
    model = _toy_model()
    kept = [model[3][1], model[3][2], model[3][3]]
    x = torch.randn(2, 3, 16, 16)
    before_shape, before_params = model(x).shape, count_parameters(model)

    names = convert_convs(model, "DConv")

    assert names == ["0", "3.0"]
    assert isinstance(model[0], SeparableConv) and isinstance(model[3][0], SeparableConv)
    assert model[0].pointwise.bias is not None and model[3][0].pointwise.bias is None
    assert model[3][0].conv.stride == (2, 2)
    assert [model[3][1], model[3][2], model[3][3]] == kept
    assert model(x).shape == before_shape
    assert count_parameters(model) < before_params


def test_convert_convs_include_filter_and_mode():
    model = _toy_model().eval()
    names = convert_convs(model, "ConvB2", include=lambda name, conv: conv.in_channels > 3)
    assert names == ["3.0"]
    assert isinstance(model[0], nn.Conv2d)
    assert not model[3][0].training


def test_convert_convs_rejects_a_bad_name_before_editing():
    model = _toy_model()
    with pytest.raises(ValueError):
        convert_convs(model, "Nope")
    assert isinstance(model[0], nn.Conv2d)


def test_convert_convs_keeps_shared_convs_shared():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    assert convert_convs(model, "DConv") == ["0", "2"]
    assert model[0] is model[2]


def test_count_parameters_ignores_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert count_parameters(model) == 3 * 4 + 4 + 4 + 4
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 + 4 + 4


def test_convert_convs_keeps_padding_mode_and_accepts_large_group_counts():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    assert convert_convs(model, "DConvA32") == ["0"]
    assert model[0].conv.padding_mode == "reflect" and model[0].conv.groups == 32
    assert model(torch.randn(1, 64, 6, 6)).shape == (1, 64, 6, 6)
