"""The head as SimVG publishes it ("model.head.type: simvg").

SimVG's, not ours: input projections, text-guided query generation, a token branch on the
object token and a DETR decoder branch, as the official code (Dmmm1997/SimVG,
``TextGuidedQuerySelectKDDETRHead``) builds and runs them, so that its released weights
(``simvg import-official``) give its published outputs.
"""

from __future__ import annotations

from torch import nn

from simvg.config import HeadConfig
from simvg.models.encoders.base import EncoderOutput
from simvg.models.heads.position_encoding import detr_sine_position_encoding
from simvg.models.heads.simvg_decoder_branch import SimVGDecoderBranch
from simvg.models.heads.simvg_query_generation import SimVGQueryGenerator
from simvg.models.heads.simvg_token_branch import SimVGTokenBranch


class SimVGHead(nn.Module):
    """Everything after the encoder, for an encoder of width ``width``.

    The encoder's visual, text and object tokens are projected to ``config.hidden_dim``; the
    query generator reads the text; the token branch reads the object token plus each query;
    the decoder branch reads the visual tokens with the queries as positions.

    forward(encoded, use_decoder) returns a dict:
      "token": {"logits": (B, 2), "boxes": (B, 4)}, or (B, Q, 2) and (B, Q, 4) with Q > 1
        queries (one scored box per query);
      "decoder": {"logits": (B, Q, 2), "boxes": (B, Q, 4), "aux": [...]} when it runs;
      "object_token": (B, D) (or (B, Q, D)) what the token branch reads;
      "grid", "visual_tokens", "visual_mask": the encoder's.
    Boxes are normalised cx, cy, w, h in the model's input frame; class 0 = object.
    """

    def __init__(self, width: int, config: HeadConfig):
        super().__init__()
        dim = config.hidden_dim
        self.visual_proj = nn.Linear(width, dim)  # SimVG: a 1 x 1 convolution on the token grid
        self.text_proj = nn.Linear(width, dim)
        self.object_proj = nn.Linear(width, dim)
        self.query_generator = SimVGQueryGenerator(
            dim,
            config.num_queries,
            config.tqg_layers,
            config.tqg_heads,
            config.tqg_ffn,
            config.dropout,
        )
        self.token_branch = SimVGTokenBranch(dim, config.box_mlp_layers)
        self.decoder_branch = None
        if config.use_decoder:
            self.decoder_branch = SimVGDecoderBranch(
                dim,
                config.decoder_layers,
                config.decoder_heads,
                config.decoder_ffn,
                config.dropout,
                config.box_mlp_layers,
            )

    def forward(self, encoded: EncoderOutput, use_decoder: bool | None = None) -> dict:
        run_decoder = self.decoder_branch is not None if use_decoder is None else use_decoder
        if run_decoder and self.decoder_branch is None:
            raise ValueError(
                "this model has no decoder branch (head.use_decoder is false); use the token branch"
            )
        queries = self.query_generator(self.text_proj(encoded.text_tokens), encoded.text_mask)
        object_tokens = self.object_proj(encoded.object_token)[:, None] + queries
        token = self.token_branch(object_tokens)
        single = queries.shape[1] == 1
        out: dict = {
            "token": {k: v[:, 0] for k, v in token.items()} if single else token,
            "object_token": object_tokens[:, 0] if single else object_tokens,
            "grid": encoded.grid,
            "visual_tokens": encoded.visual_tokens,
            "visual_mask": encoded.visual_mask,
        }
        if run_decoder:
            visual = self.visual_proj(encoded.visual_tokens)
            valid = encoded.visual_mask.reshape(-1, *encoded.grid)
            pos = detr_sine_position_encoding(valid, visual.shape[-1]).to(visual.dtype)
            out["decoder"] = self.decoder_branch(
                visual, ~encoded.visual_mask, pos, queries, all_layers=self.training
            )
        return out
