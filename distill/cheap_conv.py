"""Moonshine's cheap convolutions (Crowley, Gray & Storkey, NeurIPS 2018).

A student is the teacher with every full 3x3 convolution swapped for a cheaper block.
Blocks are named as in the paper's reference code:

    Conv        standard 3x3 convolution
    DConv       depthwise 3x3 -> BN-ReLU -> 1x1
    DConvG{n}   grouped 3x3, n channels per group -> BN-ReLU -> 1x1
    DConvA{n}   grouped 3x3, n groups -> BN-ReLU -> 1x1
    ConvB{b}    1x1 down to out/b -> BN-ReLU -> 3x3 -> BN-ReLU -> 1x1 up
    DConvB{b}   as ConvB{b} with a depthwise middle 3x3
    G{n}B{b}    as ConvB{b} with a grouped middle 3x3, n channels per group
    A{n}B{b}    as ConvB{b} with a grouped middle 3x3, n groups

Every block maps (B, in_channels, H, W) to (B, out_channels, H', W') with the same H', W'
as the 3x3 convolution it replaces. The block's output is left un-normalised: in a
pre-activation ResNet the next BN-ReLU follows it, exactly as after the original conv.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

BLOCK_PATTERNS = (
    "Conv",
    "DConv",
    "DConvG{n}",
    "DConvA{n}",
    "ConvB{b}",
    "DConvB{b}",
    "G{n}B{b}",
    "A{n}B{b}",
)

_Pair = int | tuple[int, int]
_Padding = _Pair | str


class Conv(nn.Module):
    """A standard 3x3 convolution (the teacher's block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: _Pair = 1,
        bias: bool = False,
        padding: _Padding = 1,
        dilation: _Pair = 1,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            3,
            stride,
            padding,
            dilation,
            bias=bias,
            padding_mode=padding_mode,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SeparableConv(nn.Module):
    """Grouped 3x3 (``groups`` groups) -> BN-ReLU -> pointwise 1x1.

    ``groups == in_channels`` is the depthwise-separable DConv block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        stride: _Pair = 1,
        bias: bool = False,
        padding: _Padding = 1,
        dilation: _Pair = 1,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            in_channels,
            3,
            stride,
            padding,
            dilation,
            groups=groups,
            bias=False,
            padding_mode=padding_mode,
        )
        self.bn = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(F.relu(self.bn(self.conv(x))))


class BottleneckConv(nn.Module):
    """1x1 down to ``mid`` -> BN-ReLU -> 3x3 (``groups`` groups) -> BN-ReLU -> 1x1 up."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        groups: int = 1,
        stride: _Pair = 1,
        bias: bool = False,
        padding: _Padding = 1,
        dilation: _Pair = 1,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.down = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv = nn.Conv2d(
            mid_channels,
            mid_channels,
            3,
            stride,
            padding,
            dilation,
            groups=groups,
            bias=False,
            padding_mode=padding_mode,
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.up = nn.Conv2d(mid_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.down(x)))
        x = F.relu(self.bn2(self.conv(x)))
        return self.up(x)


_NAME_RE = re.compile(
    r"^(?:(?P<conv>Conv)|(?P<dconv>DConv)|DConvG(?P<dg>\d+)|DConvA(?P<da>\d+)"
    r"|ConvB(?P<cb>\d+)|DConvB(?P<db>\d+)|G(?P<gn>\d+)B(?P<gb>\d+)|A(?P<an>\d+)B(?P<ab>\d+))$"
)


def _parse(name: str) -> tuple[re.Match[str], dict[str, int]]:
    """Match a block name; returns the match and its numbers (n, b) by group name."""
    match = _NAME_RE.match(name) if isinstance(name, str) else None
    nums = {k: int(v) for k, v in match.groupdict().items() if v and v.isdigit()} if match else {}
    if match is None or 0 in nums.values():
        raise ValueError(
            f"unknown cheap conv {name!r}; valid names: {', '.join(BLOCK_PATTERNS)} "
            "(n, b positive integers, e.g. DConvA4, ConvB2, G8B2)"
        )
    return match, nums


def _check_divisible(name: str, what: str, channels: int, by: int) -> None:
    if channels % by != 0:
        raise ValueError(f"cheap conv {name!r}: {what} ({channels}) is not divisible by {by}")


def build_cheap_conv(
    name: str,
    in_channels: int,
    out_channels: int,
    stride: _Pair = 1,
    bias: bool = False,
    *,
    padding: _Padding = 1,
    dilation: _Pair = 1,
    padding_mode: str = "zeros",
) -> nn.Module:
    """Build the cheap block called ``name`` standing in for a 3x3 convolution.

    Args:
        name: a block name such as "DConv", "DConvA4", "ConvB2" or "G8B2" (see
            ``BLOCK_PATTERNS``); n and b are positive integers.
        in_channels, out_channels: channel counts of the replaced convolution.
        stride, padding, dilation, padding_mode: those of the replaced 3x3 convolution,
            applied
            by the block's 3x3 part, so the output spatial size is unchanged.
        bias: whether the block's last convolution has a bias (the inner ones never do:
            a BatchNorm follows them).

    Returns:
        A module mapping (B, in_channels, H, W) to (B, out_channels, H', W').

    Raises:
        ValueError: for an unknown or malformed name, or channel counts that the block's
            group or bottleneck size does not divide.
    """
    match, nums = _parse(name)
    kw = dict(
        stride=stride, bias=bias, padding=padding, dilation=dilation, padding_mode=padding_mode
    )

    if match["conv"]:
        return Conv(in_channels, out_channels, **kw)
    if match["dconv"]:
        return SeparableConv(in_channels, out_channels, groups=in_channels, **kw)
    if "dg" in nums:
        _check_divisible(name, "in_channels", in_channels, nums["dg"])
        return SeparableConv(in_channels, out_channels, groups=in_channels // nums["dg"], **kw)
    if "da" in nums:
        _check_divisible(name, "in_channels", in_channels, nums["da"])
        return SeparableConv(in_channels, out_channels, groups=nums["da"], **kw)

    # Bottleneck family: the width is out_channels // b, as in the reference code.
    b = nums.get("cb") or nums.get("db") or nums.get("gb") or nums["ab"]
    _check_divisible(name, "out_channels", out_channels, b)
    mid = out_channels // b
    if "cb" in nums:
        groups = 1
    elif "db" in nums:
        groups = mid
    elif "gn" in nums:
        _check_divisible(name, "bottleneck width out_channels/b", mid, nums["gn"])
        groups = mid // nums["gn"]
    else:
        _check_divisible(name, "bottleneck width out_channels/b", mid, nums["an"])
        groups = nums["an"]
    return BottleneckConv(in_channels, out_channels, mid, groups=groups, **kw)


def convert_convs(
    model: nn.Module, block: str, *, include: Callable[[str, nn.Conv2d], bool] | None = None
) -> list[str]:
    """Replace, in place, every full 3x3 ``nn.Conv2d`` of ``model`` by a cheap block.

    A convolution is replaced when its kernel is 3x3, ``groups == 1`` and
    ``include(qualified_name, conv)`` (if given) is true. The block keeps the channel
    counts, stride, padding (and its mode), dilation, bias presence, device, dtype and
    train/eval mode.
    A convolution shared by several parents is replaced by one shared block. The root
    module itself is never replaced. Blocks inserted here are not converted again.

    Returns:
        The qualified names (as in ``model.named_modules()``) that were replaced.
    """
    _parse(block)  # fail on a bad name before touching the model
    targets = []
    for parent_name, parent in model.named_modules():
        # _modules, unlike named_children(), also lists a module registered twice.
        for child_name, child in parent._modules.items():
            if not isinstance(child, nn.Conv2d):
                continue
            if child.kernel_size != (3, 3) or child.groups != 1:
                continue
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if include is not None and not include(qualified, child):
                continue
            targets.append((qualified, parent, child_name, child))

    replaced: dict[int, nn.Module] = {}
    names = []
    for qualified, parent, child_name, conv in targets:
        if id(conv) not in replaced:
            new = build_cheap_conv(
                block,
                conv.in_channels,
                conv.out_channels,
                stride=conv.stride,
                bias=conv.bias is not None,
                padding=conv.padding,
                dilation=conv.dilation,
                padding_mode=conv.padding_mode,
            )
            new.to(device=conv.weight.device, dtype=conv.weight.dtype)
            new.train(conv.training)
            replaced[id(conv)] = new
        setattr(parent, child_name, replaced[id(conv)])
        names.append(qualified)
    return names


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
