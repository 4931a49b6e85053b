"""Checkpoints shipped inside the package.

``DEFAULT_MODEL_DIR`` is the distilled SynthRef student that the demo serves by default;
README "Shipped default model" gives the command that rebuilds it.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "synthref-student"
