"""Weights derived from a module's parameters (products, concatenations, fused copies,
constant outputs), kept between inference calls and rebuilt whenever a parameter (or a
buffer, such as BatchNorm statistics) changes.

At batch 1 a small model's cost is largely the number of small kernels and the bytes of
weights they read, not their arithmetic; folding two linear maps into one, a BatchNorm
into the convolution before it, or computing once what depends on the weights alone
removes kernels without changing the result beyond float rounding. Only used without
autograd (the derived tensors carry no gradient back to the parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def inference_only(module: torch.nn.Module) -> bool:
    """True when ``module`` runs for inference: eval mode and no autograd."""
    return not module.training and not torch.is_grad_enabled()


def transposed(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An (out, in) weight as a contiguous (in, out) matrix (in ``dtype``, default its own),
    for ``torch.addmm(bias, x, W)``: on our 2-core test machine a one-row product read from
    main memory ran faster in this layout than ``F.linear`` with the (out, in) one, which
    left the read to one core."""
    return weight.T.to(dtype or weight.dtype).contiguous()


def hooked(*modules: torch.nn.Module | None) -> bool:
    """True when any of ``modules`` or their submodules has forward hooks: a folded or fused
    path would not run those modules, so their hooks (a feature recorder) would not fire."""
    stack = list(modules)  # a plain walk: Module.modules() costs several times more per call
    while stack:
        module = stack.pop()
        if module is not None:
            if module._forward_hooks or module._forward_pre_hooks:
                return True
            stack.extend(module._modules.values())
    return False


class DerivedWeights:
    """get(name, params, build): ``build()``'s value, recomputed when any of ``params`` was
    updated in place (optimizer step, ``load_state_dict``) or moved (``.to``) since; None
    when a parameter was created under ``torch.inference_mode`` (such tensors keep no
    version counter, so a change could not be seen) or when one is not a tensor (a quantized
    module's packed weight): the caller then computes directly."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[tuple, list, object]] = {}

    def get(self, name: str, params: Sequence[torch.Tensor], build: Callable[[], T]) -> T | None:
        try:
            # A move or cast gives new storage (the kept storages below keep old addresses
            # from being reused), an in-place update a new version.
            key = tuple([(p.data_ptr(), p._version) for p in params])
        except (AttributeError, RuntimeError):  # a packed weight (a method); an inference tensor
            return None
        hit = self._values.get(name)
        if hit is not None and hit[0] == key:
            return hit[2]  # type: ignore[return-value]
        with torch.no_grad():
            value = build()
        # Holding the storages the key points into keeps their addresses from being reused by
        # new parameters (a move to another device and back) while this entry stands.
        self._values[name] = (key, [p.untyped_storage() for p in params], value)
        return value


ParameterGroups = list[tuple[tuple[str, ...], tuple[str, ...]]]


def parameter_groups(names: Sequence[str]) -> ParameterGroups:
    """Dotted parameter names -> [(owner module's path, its parameters' names)], in order,
    for :func:`parameters_at`."""
    groups: ParameterGroups = []
    for name in names:
        *owner, param = name.split(".")
        if groups and groups[-1][0] == tuple(owner):
            groups[-1] = (groups[-1][0], groups[-1][1] + (param,))
        else:
            groups.append((tuple(owner), (param,)))
    return groups


def parameters_at(module: torch.nn.Module, groups: ParameterGroups) -> list[torch.Tensor | None]:
    """The parameters (or buffers) of ``module`` named by ``groups`` (:func:`parameter_groups`), read
    through the modules' own dictionaries: ``Module.__getattr__`` costs about half a
    microsecond a name, which adds up at batch-1 call rates, and a replaced submodule is
    still seen. None where a name is not a parameter (a quantized module keeps its weight
    packed), which :meth:`DerivedWeights.get` answers with None."""
    found: list[torch.Tensor | None] = []
    for owner_path, names in groups:
        owner: torch.nn.Module | None = module
        for name in owner_path:
            owner = owner._modules.get(name) if owner is not None else None
        if owner is None:  # the module was replaced by one of another structure
            found += [None] * len(names)
            continue
        params, buffers = owner._parameters, owner._buffers
        found += [params[name] if name in params else buffers.get(name) for name in names]
    return found
