"""Reading torch files that others released (``torch.save`` pickles, e.g. BEiT-3's weights).

They are read with torch's restricted unpickler (``weights_only=True``): tensors, plain
containers, numbers and strings only. A file that asks for anything else (a class, a
function: what a malicious pickle needs to run code) is refused, naming the global; nothing
in it is ever executed. Numbers saved as numpy scalars (SimVG's checkpoints hold accuracies
so) are let through as well: numpy's scalar and dtype constructors only build numbers.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch


def _numpy_numbers() -> list:
    """numpy's scalar constructor (under its numpy 2 and numpy 1 names) and its number dtypes."""
    from numpy._core.multiarray import scalar

    dtypes = [type(np.dtype(code)) for code in "?bhilqBHILQefdg"]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


class TorchFileError(ValueError):
    """A torch file that cannot be read safely; the message names the file (and the refused global)."""


def load_torch_file(path: str | Path) -> dict:
    """The dict a ``torch.save`` file holds (``.pth``, ``.pt``, or a ``.zip`` that is one), on the CPU.

    Raises FileNotFoundError if ``path`` is not a file, TorchFileError if it is not a torch file,
    holds something other than a dict at its top level, or asks for a global outside torch's
    allow-list (the error names it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"torch file not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_numbers()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            raise TorchFileError(f"{path}: refused to load: it asks for the Python global '{found.group(1)}', which "
                                 f"is not a tensor, container, number or string (only those are read; nothing in "
                                 f"the file is executed)") from None  # fmt: skip
        detail = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        raise TorchFileError(
            f"{path}: refused to load: {detail.group(1) if detail else text.splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError, struct.error) as err:
        raise TorchFileError(
            f"{path}: not a readable torch file ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(obj, dict):
        raise TorchFileError(
            f"{path}: expected a dict at the top level, found {type(obj).__name__}"
        )
    return obj
