"""Inference runs the visual stem with BatchNorm folded into its convolutions, channels last."""

import pytest
import torch

from distill import convert_convs
from simvg.models.conv_stem import ConvStem


@pytest.mark.parametrize("block", ["Conv", "DConv", "ConvB2", "DConvB2", "G2B2"])
def test_the_fused_inference_stem_gives_the_stems_features(block):
    torch.manual_seed(0)
    stem = ConvStem([8, 8, 16, 16], [0, 1, 0, 1])
    if block != "Conv":
        convert_convs(stem, block)
    images = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        stem.train()(torch.randn(4, 3, 64, 64) * 2 + 1)  # BatchNorm statistics away from 0 and 1
        stem.eval()
        expected = stem(images)  # autograd on: the stem as it is
        with torch.inference_mode():
            fused = stem(images)
        assert len(fused) == 4 and fused[-1].shape == (2, 16, 4, 4)
        for got, want in zip(fused, expected):
            assert torch.allclose(got, want, atol=1e-5)
        # The kept copy has no BatchNorm left and its weights are channels-last.
        kept = stem._inference_stem()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules())
        convs = [m for m in kept.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        assert all(p.is_contiguous() for p in stem.parameters())  # the stem itself is left as it was
    # A weight update is picked up too.
    with torch.no_grad():
        next(stem.parameters()).mul_(1.5)
    expected = stem(images)
    with torch.inference_mode():
        assert torch.allclose(stem(images)[-1], expected[-1], atol=1e-5)


def test_hooks_on_the_stem_still_fire_at_inference():
    stem = ConvStem([8, 8], [0, 1]).eval()
    seen = []
    stem.stages[1].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.inference_mode():
        stem(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 8, 8, 8)]


def test_the_fused_stem_follows_convolutions_replaced_after_it_was_built():
    torch.manual_seed(0)
    stem = ConvStem([8, 8], [0, 1]).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        stem(images)  # builds the fused copy of the plain stem
    convert_convs(stem, "DConv")  # as a student is made from a teacher
    stem.eval()
    expected = stem(images)
    with torch.inference_mode():
        fused = stem(images)
    assert torch.allclose(fused[-1], expected[-1], atol=1e-5)
    assert any(m.groups > 1 for m in stem._inference_stem().modules() if isinstance(m, torch.nn.Conv2d))
