"""Record intermediate outputs of any model with forward hooks, without editing the model."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from torch.utils.hooks import RemovableHandle


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted, as in ``model.named_modules()``; "" is the model).

    Raises:
        KeyError: naming the unknown module and suggesting close matches.
    """
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no module named {name!r} in {type(model).__name__}{hint}")
    return modules[name]


class FeatureRecorder:
    """Context manager that records the outputs of named submodules during forwards.

    Example::

        with FeatureRecorder(model, ["block1", "block2", "block3"]) as rec:
            logits = model(images)
        maps = [rec.features[n] for n in ("block1", "block2", "block3")]

    ``features[name]`` holds the output of the latest call of that module (kept in the
    autograd graph, so losses on it backpropagate into the model). Hooks are registered
    on entry and removed on exit; ``features`` stays readable after exit.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        if isinstance(names, str):
            names = [names]
        self.modules = {name: get_module(model, name) for name in names}
        self.features: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.features[name] = output

        return record

    def __enter__(self) -> FeatureRecorder:
        self.features.clear()
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
