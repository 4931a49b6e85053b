"""Shipped checkpoints are portable: no file under simvg/weights names a path of the machine that
wrote it, and loading one reads nothing from where packages were installed."""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from simvg import Grounder
from simvg.weights import DEFAULT_MODEL_DIR

WEIGHTS = DEFAULT_MODEL_DIR.parent
# Absolute paths (POSIX home and system folders, Windows drives) and Python installation folders.
MACHINE_PATTERNS = [r"(?<![\w.])/(?:root|home|Users|tmp|var|opt|usr|mnt|srv|work|private)/", r"\b[A-Za-z]:[\\/]\w",
                    r"site-packages", r"dist-packages", r"[/\\]\.pyenv[/\\]", r"[/\\](?:ana|mini)conda\d*[/\\]",
                    r"[/\\]\.?venv[/\\]"]  # fmt: skip
# A JSON string that is an absolute path: a root, a folder and more ("/" alone is a vocabulary token).
ABSOLUTE = re.compile(r"^(?:~|[A-Za-z]:)?[/\\][^/\\\s]+[/\\]")


def committed_text(path: Path) -> str:
    """The text of a shipped file; for safetensors, its JSON header (names, dtypes, metadata)."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return f.read(length).decode("utf-8")
    return path.read_text(encoding="utf-8")


def json_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *json_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return [value] if isinstance(value, str) else []


SHIPPED = sorted(p for p in WEIGHTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(WEIGHTS)))
def test_no_shipped_file_names_a_path_of_the_machine_that_wrote_it(path):
    text = committed_text(path)
    for pattern in MACHINE_PATTERNS:
        found = re.search(pattern, text)
        assert found is None, f"{path} holds {text[max(0, found.start() - 60) : found.end() + 60]!r}"
    if path.suffix == ".json":
        absolute = [s for s in json_strings(json.loads(text)) if ABSOLUTE.match(s)]
        assert not absolute, f"{path} holds absolute paths: {absolute}"


def test_the_shipped_model_loads_without_the_pretrained_package(monkeypatch):
    # Its encoder's structure is in its config and its weights in its own file: the MiniLM
    # package it was trained from is neither found nor read.
    import simvg.models.pretrained as pretrained

    def missing(*args, **kwargs):
        raise AssertionError("loading a checkpoint looked for the pretrained package")

    monkeypatch.setattr(pretrained, "minilm_directory", missing)
    grounder = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    assert grounder.backbone_config["_name_or_path"] == "minilm-l6"
    result = grounder.predict(np.full((64, 64, 3), 200, np.uint8), "the red circle")
    assert len(result.box) == 4
