"""simvg: visual grounding with a single-stream encoder, a tiny head, and distillation built in.

``from simvg import Grounder`` is the Python entry point: ``Grounder.from_pretrained(dir)``
then ``.predict(image, text)``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily so that `import simvg` (e.g. for the CLI's --help) stays fast.
    if name == "Grounder":
        from simvg.inference import Grounder

        return Grounder
    if name == "GroundingResult":
        from simvg.inference import GroundingResult

        return GroundingResult
    raise AttributeError(f"module 'simvg' has no attribute {name!r}")


__all__ = ["Grounder", "GroundingResult", "__version__"]
