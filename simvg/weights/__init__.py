"""Checkpoints shipped inside the package.

``DEFAULT_MODEL_DIR`` is the distilled SynthRef student that the demo serves by default;
`make default-model` rebuilds it (docs/distillation-study.md, "The shipped default model").
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "synthref-student"
