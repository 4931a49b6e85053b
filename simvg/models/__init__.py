"""The SimVG grounding model, its encoders, heads and criterion."""

from simvg.models.criterion import GroundingCriterion, build_criterion
from simvg.models.grounding_model import SimVG, build_model

__all__ = ["GroundingCriterion", "SimVG", "build_criterion", "build_model"]
