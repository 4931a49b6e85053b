"""The hybrid encoder's visual stem: residual 3x3-conv stages down to a token grid."""

from __future__ import annotations

import torch
from torch import fx, nn

from simvg.models.derived_weights import (
    DerivedWeights,
    hooked,
    inference_only,
    parameter_groups,
    parameters_at,
)


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
        if inference_only(self):
            fused = self._inference_stem()
            if fused is not None:
                return fused(x.contiguous(memory_format=torch.channels_last))
        return run_stages(self.stages, x)

    def _inference_stem(self) -> nn.Module | None:
        """This stem for inference, kept between calls and rebuilt when a parameter or a
        BatchNorm statistic changes: every BatchNorm folded into the convolution before it
        (torch.fx's conv-BN fusion) and the weights in channels-last memory order, which the
        CPU's convolution kernels run faster, depthwise ones most (same features up to float
        rounding; bench/stem_speed.py). None if it cannot be kept (see DerivedWeights) or when a
        module of the stem has forward hooks."""
        if hooked(self):
            return None
        if not hasattr(self, "_derived"):
            self._derived, self._groups = DerivedWeights(), []
        tensors = parameters_at(self, self._groups)
        if not self._groups or any(t is None for t in tensors):  # first call, or modules replaced since
            names = [name for name, _ in self.named_parameters()] + [name for name, _ in self.named_buffers()]
            self._groups = parameter_groups(names)
            tensors = parameters_at(self, self._groups)
        return self._derived.get("fused", tensors, self._fused_copy)

    def _fused_copy(self) -> nn.Module:
        from torch.fx.experimental.optimization import fuse

        # Traced through a holder of the stages alone: the copy that fusing makes leaves out the
        # stem's kept derived modules, and tracing does not re-enter this inference path.
        return fuse(fx.symbolic_trace(_Stages(self.stages)), no_trace=True).to(memory_format=torch.channels_last)


def run_stages(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output, in order, the input of the first being ``x``."""
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


class _Stages(nn.Module):
    def __init__(self, stages: nn.ModuleList):
        super().__init__()
        self.stages = stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_stages(self.stages, x)
