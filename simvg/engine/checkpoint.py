"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and tokenizer files.

Nothing is ever unpickled: weights and optimizer tensors are safetensors, everything else
JSON. Directories are written atomically (written beside the target, then renamed), so an
interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from simvg.config import Config, ConfigError, from_dict, to_dict
from simvg.models.pretrained import save_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
MODULE_STATE_FILE = "training_module.safetensors"  # a training run's whole module (heads of auxiliary losses too)
# An ONNX export (simvg/onnx_backend.py) holds these graphs instead of WEIGHTS_FILE.
ONNX_FILES = ("model.onnx", "model.int8.onnx")
# What a checkpoint writes: a save replaces these (drops those it does not write again) and
# carries any other file of the old checkpoint over (a user's predictions, a .git).
CHECKPOINT_FILES = {CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, MODULE_STATE_FILE,
                    "tokenizer.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                    "sentencepiece.bpe.model", *ONNX_FILES}  # fmt: skip
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names what is wrong."""


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def _default_permissions(directory: Path) -> None:
    """Give ``directory`` (made private by mkdtemp) and its files the permissions a plain
    mkdir / open would: 0o777 / 0o666 less the process's umask."""
    umask = _current_umask()
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask can only
    read it by setting it, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def write_atomically(target: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` to fill a fresh directory, then move it to ``target``, which
    must not exist, be empty, or be a checkpoint (a directory with files but no checkpoint is
    refused). Files of the old checkpoint other than checkpoint files (:data:`CHECKPOINT_FILES`:
    a user's predictions, a ``.git``) are carried over into the new one.

    The old ``target`` (if any) is renamed to ``<target>.old`` first and removed after the
    new one is in place; :func:`resolve_checkpoint` falls back to ``.old`` if a crash
    happened in between. A symbolic link to a directory is written through.
    """
    target = Path(target)
    if target.is_symlink() and target.is_dir():
        target = target.resolve()
    if target.is_file() or target.is_symlink():
        raise CheckpointError(f"{target} is a file or a dangling link, not a checkpoint directory: refusing to replace it")
    if target.is_dir() and any(target.iterdir()) and not _holds_checkpoint(target):
        raise CheckpointError(f"{target} holds files but no checkpoint ({CONFIG_FILE}, {WEIGHTS_FILE}): refusing to "
                              f"replace it; choose a new or empty directory")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = target.with_name(target.name + ".old")
    carried: list[str] = []
    try:
        write(tmp)
        _default_permissions(tmp)
        _fsync_tree(tmp)
        if target.is_dir():
            for entry in target.iterdir():
                if entry.name not in CHECKPOINT_FILES and not (tmp / entry.name).exists():
                    os.replace(entry, tmp / entry.name)
                    carried.append(entry.name)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if carried and not target.exists() and old.is_dir():  # failed between the two renames
            os.replace(old, target)
        for name in carried:  # the user's files go back where they were
            if (tmp / name).exists() and target.is_dir():
                os.replace(tmp / name, target / name)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _holds_checkpoint(path: Path) -> bool:
    """A config and weights: model.safetensors, or an ONNX export's model.onnx."""
    return (path / CONFIG_FILE).is_file() and any((path / name).is_file() for name in (WEIGHTS_FILE, ONNX_FILES[0]))


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory at ``path`` (or its ``.old`` copy after an interrupted save);
    an ONNX export (model.onnx instead of model.safetensors) is one too."""
    path = Path(path)
    if not path.exists():
        old = path.with_name(path.name + ".old")
        if old.is_dir():
            return old
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected {CONFIG_FILE} and {WEIGHTS_FILE} inside)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file() and not (name == WEIGHTS_FILE and (path / ONNX_FILES[0]).is_file()):
            inside = [path / sub for sub in ("best", "last") if (path / sub / WEIGHTS_FILE).is_file()]
            hint = f" (a training run's folder? its checkpoint is {inside[0]})" if inside else ""
            raise CheckpointError(f"checkpoint {path} is missing {name}{hint}")
    return path


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: Config,
    backbone_config: dict,
    tokenizer: Any,
    extra: dict | None = None,
    training_state: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    weights_dtype: torch.dtype | None = None,
    tensor_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write a checkpoint directory atomically.

    extra: JSON-serialisable information saved in config.json (e.g. metrics, step).
    weights_dtype: store floating-point weights in this dtype (e.g. torch.float16 halves the
        file); loading casts them back to the model's float32.
    training_state: JSON-serialisable loop state for ``--resume`` (with ``optimizer``).
    tensor_files: more safetensors files to write in the same atomic step, name -> tensors.
    """

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "config": to_dict(config),
            "backbone_config": portable_backbone_config(backbone_config, config.model.encoder.pretrained),
            "vocab_size": len(tokenizer),
            **(extra or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        stored = model if weights_dtype is None else copy.deepcopy(model).to(weights_dtype)
        save_model(stored, str(tmp / WEIGHTS_FILE))
        save_tokenizer(tokenizer, tmp)
        if training_state is not None:
            tensors = {"rng.torch": torch.get_rng_state()}
            state = dict(training_state)
            if optimizer is not None:
                tensors |= optimizer_tensors(optimizer)
                state["param_groups"] = optimizer_groups(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        for name, file_tensors in (tensor_files or {}).items():
            save_file({k: v.contiguous() for k, v in file_tensors.items()}, str(tmp / name))

    write_atomically(Path(directory), write)


def portable_backbone_config(backbone_config: dict, pretrained: str | None) -> dict:
    """``backbone_config`` without this machine's path to the pretrained weights.

    A Hugging Face config records the directory it was read from (``_name_or_path``); for the
    "minilm-l6" alias that is a folder of this machine's site-packages. Loading a checkpoint
    never reads it (the structure is in the other keys), so the recipe's own name for the
    weights (an alias or hub id) is recorded instead, or nothing for a local directory."""
    name = backbone_config.get("_name_or_path")
    if not isinstance(name, str) or not _is_local_path(name):
        return backbone_config
    return {**backbone_config, "_name_or_path": pretrained if pretrained and not _is_local_path(pretrained) else ""}


def shareable_path(path: str) -> str:
    """``path`` as a checkpoint meant to be shared records it: relative to the current
    directory where it lies inside it, else its last two parts (``teacher/best``); never this
    machine's absolute path."""
    resolved = Path(path)
    if not resolved.is_absolute():
        return path
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*resolved.parts[-2:]))


def _is_local_path(name: str) -> bool:
    """Whether ``name`` is a filesystem path (here or on another machine), not a hub id or alias."""
    windows_drive = re.match(r"[A-Za-z]:[\\/]", name) is not None
    return name.startswith(("/", ".", "~", "\\")) or windows_drive or Path(name).exists()


def read_checkpoint_config(directory: str | Path) -> dict:
    path = resolve_checkpoint(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from err
    for key in ("config", "backbone_config", "vocab_size"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing '{key}'")
    return meta


# Parameters older checkpoints carry that had no effect on any output and were removed: the
# words landmark pointer's selection and key biases and the cell-based token branch's key bias
# (each added one constant to every score before a softmax, over the words or over the cells).
_RETIRED_SUFFIXES = ("landmark_relation.pointer.select.bias", "landmark_relation.pointer.key.bias")
_RETIRED_PATTERN = re.compile(r"(^|\.)token_head(\.one\.branches\.\d+)?\.key\.bias$")


def _retired(key: str) -> bool:
    return key.endswith(_RETIRED_SUFFIXES) or _RETIRED_PATTERN.search(key) is not None


def load_checkpoint_tokenizer(directory: Path):
    """The tokenizer saved in the (resolved) checkpoint ``directory``."""
    from simvg.models.pretrained import load_tokenizer

    tokenizer_files = ["tokenizer.json", "vocab.txt"]
    if not any((directory / name).is_file() for name in tokenizer_files):
        raise CheckpointError(f"checkpoint {directory} is missing its tokenizer files ({' or '.join(tokenizer_files)})")
    if not (directory / TOKENIZER_CONFIG_FILE).is_file():  # without it the tokenizer has no padding token
        raise CheckpointError(f"checkpoint {directory} is missing {TOKENIZER_CONFIG_FILE}")
    try:
        tokenizer = load_tokenizer(str(directory))
    except Exception as err:  # the tokenizers library raises plain Exceptions for unreadable files
        raise CheckpointError(f"checkpoint {directory}: cannot read its tokenizer files: {err}") from err
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"checkpoint {directory}: its tokenizer has no padding token ({TOKENIZER_CONFIG_FILE})")
    return tokenizer


def load_checkpoint(directory: str | Path, map_location: str = "cpu"):
    """Rebuild the model from a checkpoint directory.

    Returns (model, tokenizer, config, meta); the model is in eval mode on ``map_location``.
    """
    from simvg.models import build_model

    directory = resolve_checkpoint(directory)
    meta = read_checkpoint_config(directory)
    try:
        config = from_dict(Config, meta["config"])
    except ConfigError as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from err
    tokenizer = load_checkpoint_tokenizer(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"checkpoint {directory} is an ONNX export ({ONNX_FILES[0]}, no {WEIGHTS_FILE}): "
                              f"load it with Grounder.from_pretrained(..., backend='onnxruntime')")  # fmt: skip
    model = build_model(config.model, meta["vocab_size"], backbone_config=meta["backbone_config"])
    try:
        weights = load_file(str(directory / WEIGHTS_FILE), device=map_location)
        expected = model.state_dict().keys()
        weights = {key: value for key, value in weights.items() if key in expected or not _retired(key)}
        model.load_state_dict(weights, strict=True)
    except SafetensorError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file: {err}") from err
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match the model in {CONFIG_FILE}: {err}") from err
    return model.to(map_location).eval(), tokenizer, config, meta


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {
        f"optim.{index}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).contiguous()
        for index, entries in state.items()
        for name, value in entries.items()
    }


def optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    return optimizer.state_dict()["param_groups"]


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore the optimizer and the torch RNG from ``directory``; returns the loop state."""
    directory = resolve_checkpoint(directory)
    state_path, tensor_path = directory / STATE_FILE, directory / OPTIMIZER_FILE
    if not state_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{directory} holds no training state ({STATE_FILE}, {OPTIMIZER_FILE}): cannot resume from it")
    state = json.loads(state_path.read_text())
    tensors = load_file(str(tensor_path))
    torch.set_rng_state(tensors.pop("rng.torch"))
    if optimizer is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def _listed(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_model_weights(model: torch.nn.Module, directory: str | Path, fresh: Sequence[str] = ()) -> Path:
    """Copy the weights of the checkpoint at ``directory`` (its ``model.safetensors``) into
    ``model``, strictly: every weight of the model must be there with the same shape, and
    nothing else (parameters retired from older checkpoints aside). ``fresh``: names or name
    prefixes (a module's path) of weights not copied: the model's keep their values, the
    checkpoint's are ignored; each must name a weight of one or the other. Returns the
    checkpoint directory read. Raises CheckpointError listing the missing, unexpected and
    mismatched weights (with both shapes)."""
    directory = resolve_checkpoint(directory)
    path = directory / WEIGHTS_FILE
    try:
        weights = load_file(str(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    own = model.state_dict()
    unknown = [name for name in fresh if not any(_named(key, name) for key in [*own, *weights])]
    if unknown:
        raise CheckpointError(f"train.load_from_fresh names no weight of the model or of {path}: {', '.join(unknown)}")
    kept = {key: value for key, value in own.items() if any(_named(key, name) for name in fresh)}
    weights = {key: value for key, value in weights.items()
               if not _retired(key) and not any(_named(key, name) for name in fresh)}  # fmt: skip
    own = {key: value for key, value in own.items() if key not in kept}
    problems = []
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs the model's {tuple(own[k].shape)}"
                  for k in own if k in weights and weights[k].shape != own[k].shape]  # fmt: skip
    if missing:
        problems.append(f"{len(missing)} weights of the model are missing: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights are not in the model: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} weights have another shape: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{path} does not fit this model ({'; '.join(problems)}); it was trained with another "
                              f"model config (compare {directory / CONFIG_FILE} with the run's; weights meant to start "
                              f"fresh go in train.load_from_fresh)")  # fmt: skip
    model.load_state_dict(weights | kept, strict=True)
    return directory


def _named(key: str, name: str) -> bool:
    """Whether the weight ``key`` is ``name`` or lies under it (``name`` a module's path)."""
    return key == name or key.startswith(name + ".")
