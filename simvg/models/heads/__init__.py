from simvg.models.heads.decoder_branch import DecoderBranch
from simvg.models.heads.query_generation import TextGuidedQueryGenerator
from simvg.models.heads.token_branch import TokenBranch

__all__ = ["DecoderBranch", "TextGuidedQueryGenerator", "TokenBranch"]
