"""Reading torch files that others released (``.pth``/``.pt``/``.zip`` pickles) without
running anything in them.

``torch.load(..., weights_only=True)`` unpickles with torch's restricted unpickler: it builds
tensors, plain containers, numbers and strings, and refuses every other Python object a
pickle names (a pickle can name any function, e.g. ``os.system``, and ask for it to be
called). Numbers saved as numpy scalars are let through as well (numpy's scalar and dtype
constructors only build numbers).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from simvg.engine.checkpoint import CheckpointError


class TorchFileError(CheckpointError):
    """A torch file that cannot be read safely; the message names the file and the cause."""


def _numpy_numbers() -> list:
    from numpy._core.multiarray import scalar

    dtypes = [type(np.dtype(code)) for code in "?bhilqBHILQefdg"]
    # Files written with numpy 1 name the scalar constructor by its old module.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def refused_global(message: str) -> str | None:
    """The name of the Python object torch's restricted unpickler refused, from its error."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def unpickler_reason(message: str) -> str:
    """The specific part of torch's restricted-unpickler error (its advice around it dropped)."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", message, re.S)
    return " ".join(found.group(1).split()) if found else message.splitlines()[0]


def load_torch_file(path: str | Path) -> dict:
    """The dict a torch file holds (tensors on the CPU), read without running any code.

    Raises :class:`TorchFileError` naming ``path`` and, for a file that asks for a Python
    object other than tensors, containers, numbers and strings, that object (it is not run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_numbers()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = refused_global(str(err))
        if name is None:
            raise TorchFileError(f"{path}: not a readable torch file ({unpickler_reason(str(err))})") from err
        raise TorchFileError(f"{path}: refused: it asks for the Python object '{name}', which weights never need "
                             f"(only tensors, containers, numbers and strings are read); nothing was run") from err  # fmt: skip
    except Exception as err:  # a damaged or foreign file fails in many ways inside the unpickler
        raise TorchFileError(f"{path}: not a readable torch file ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise TorchFileError(f"{path}: holds a {type(data).__name__}, not the dict a checkpoint file holds")
    return data
