"""The CIFAR WideResNet used by Moonshine, with a pluggable cheap convolution.

Layout (Zagoruyko & Komodakis, pre-activation), for depth d = 6n + 4 and width k:

    conv1    plain 3x3 conv, 3 -> 16 (never made cheap)
    block1   n residual blocks, 16 -> 16k, stride 1      output (B, 16k, 32, 32)
    block2   n residual blocks, 16k -> 32k, stride 2     output (B, 32k, 16, 16)
    block3   n residual blocks, 32k -> 64k, stride 2     output (B, 64k, 8, 8)
    bn, relu, global average pool, fc -> num_classes

A "basic" residual block is BN-ReLU-conv-BN-ReLU-conv; a "bottle" block keeps only the
first BN-ReLU-conv (one cheap conv per residual block). Where the channel count or stride
changes, the shortcut is a plain 1x1 conv (no BN) applied to the pre-activated input.
The 3x3 convs inside the blocks are ``build_cheap_conv(block, ...)``.

The outputs of ``block1``, ``block2`` and ``block3`` are the three maps Moonshine matches
with attention transfer: get them from ``WideResNet.forward_features`` or by hooking those
module names with ``distill.hooks.FeatureRecorder``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from distill.cheap_conv import build_cheap_conv

BLOCK_TYPES = ("basic", "bottle")


class ResidualBlock(nn.Module):
    """Pre-activation residual block whose 3x3 convs are cheap blocks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        block: str,
        num_convs: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = build_cheap_conv(block, in_channels, out_channels, stride)
        if num_convs == 2:
            self.bn2 = nn.BatchNorm2d(out_channels)
            self.conv2 = build_cheap_conv(block, out_channels, out_channels, 1)
        else:
            self.bn2 = self.conv2 = None
        self.dropout = dropout
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        if self.conv2 is not None:
            out = F.relu(self.bn2(out))
            out = F.dropout(out, self.dropout, self.training)
            out = self.conv2(out)
        else:
            out = F.dropout(out, self.dropout, self.training)
        # Projection shortcuts see the pre-activated input; identity ones the raw input.
        residual = x if self.shortcut is None else self.shortcut(act)
        return residual + out


class WideResNet(nn.Module):
    """CIFAR WideResNet; see the module docstring for the layout and stage names."""

    def __init__(
        self,
        depth: int,
        width: int,
        block: str = "Conv",
        num_classes: int = 10,
        block_type: str = "basic",
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        block_type = block_type.lower()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        n = (depth - 4) // 6
        num_convs = 2 if block_type == "basic" else 1
        channels = [16, 16 * width, 32 * width, 64 * width]

        self.conv1 = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            layers = [
                ResidualBlock(
                    channels[i] if j == 0 else channels[i + 1],
                    channels[i + 1],
                    stride if j == 0 else 1,
                    block,
                    num_convs,
                    dropout,
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialisation: He-normal with fan_out for every conv.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x: (B, 3, H, W) images -> (logits (B, num_classes), [block1, block2, block3] outputs).

        For 32x32 inputs the stage outputs are (B, 16k, 32, 32), (B, 32k, 16, 16) and
        (B, 64k, 8, 8), taken before the final BN-ReLU.
        """
        x = self.conv1(x)
        features = []
        for stage in (self.block1, self.block2, self.block3):
            x = stage(x)
            features.append(x)
        x = F.relu(self.bn(x))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) images -> logits (B, num_classes)."""
        return self.forward_features(x)[0]


def wide_resnet(
    depth: int,
    width: int,
    block: str = "Conv",
    num_classes: int = 10,
    block_type: str = "basic",
    dropout: float = 0.0,
) -> WideResNet:
    """Build WRN-``depth``-``width`` whose 3x3 convs are the cheap ``block`` (e.g. "DConv").

    ``block_type`` is "basic" (two cheap convs per residual block) or "bottle" (one).
    With depth 40, width 2 and 10 classes the parameter counts match Moonshine's
    reference code: Conv 2,243,546; DConv 293,514; ConvB2 + "bottle" 431,834.
    """
    return WideResNet(depth, width, block, num_classes, block_type, dropout)
