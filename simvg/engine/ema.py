"""An exponential moving average (EMA) of a model's weights, as SimVG's two-stage recipe uses.

After every optimizer step, each floating-point parameter and buffer of the averaged copy
moves towards the trained model's: ``ema = d * ema + (1 - d) * w``, with
``d = min(decay, (t + 1) / (t + 10))`` at update ``t`` (counted from 0), so early updates
follow the fast-changing weights closely (SimVG's warm-up of the decay). Integer buffers are
copied. The averaged copy is what validation runs, what ``best/`` keeps and what a training
checkpoint's ``model.safetensors`` holds while the EMA is on.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(decay: float, update: int) -> float:
    """The decay used at update ``update`` (0-based): SimVG's ``min(decay, (t + 1) / (t + 10))``."""
    return min(decay, (update + 1) / (update + 10))


class ModelEma:
    """A frozen copy of ``model`` (in eval mode) holding the average of its weights.

    model: the module whose weights are averaged (its structure is copied once, here).
    decay: the averaging decay, in (0, 1) (SimVG: 0.999).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        averaged = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        current = dict(model.named_parameters()) | dict(model.named_buffers())
        if averaged.keys() != current.keys():
            missing = sorted(averaged.keys() ^ current.keys())
            raise ValueError(f"the model no longer matches its EMA copy (e.g. {missing[0]})")
        return [(averaged[name], current[name]) for name in averaged]

    @torch.no_grad()
    def update(self, model: nn.Module, update: int) -> None:
        """Move the average towards ``model``'s weights; ``update`` counts the updates made so
        far in this run (the training step before this one: 0, 1, ...)."""
        decay = ema_decay(self.decay, update)
        floats, targets = [], []
        for averaged, current in self._pairs(model):
            if averaged.is_floating_point():
                floats.append(averaged)
                targets.append(current.detach().to(averaged.dtype))
            else:
                averaged.copy_(current)
        if floats:
            torch._foreach_lerp_(floats, targets, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)
