"""The hybrid encoder's visual stem: residual 3x3-conv stages down to a token grid."""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity, then ReLU (ResNet basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ConvStem(nn.Module):
    """Stages of (stride-2 conv3x3-BN-ReLU, then ``blocks[i]`` residual blocks).

    Input (B, 3, S, S) float; returns the list of stage outputs, the last of shape
    (B, channels[-1], S / 2**len(channels), S / 2**len(channels)). All its 3x3 convolutions
    are plain ``nn.Conv2d``, so ``distill.convert_convs`` can make them cheap.
    """

    def __init__(self, channels: list[int], blocks: list[int]):
        super().__init__()
        if len(channels) != len(blocks) or not channels:
            raise ValueError(f"stem_channels {channels} and stem_blocks {blocks} must be non-empty and equally long")
        stages = []
        in_channels = 3
        for out_channels, count in zip(channels, blocks):
            layers: list[nn.Module] = [
                conv3x3(in_channels, out_channels, stride=2),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            layers += [ResidualBlock(out_channels) for _ in range(count)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.stride = 2 ** len(channels)
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
