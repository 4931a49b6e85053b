"""The hybrid encoder: a conv stem's token grid and the phrase, fused in one BERT-family transformer.

Sequence: [object token; text tokens; visual tokens], all attending to all (single
stream, as BEiT-3 in SimVG). The transformer starts from pretrained text weights
(MiniLM-L6 by default); the stem, visual position embeddings and object token start fresh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from simvg.config import EncoderConfig
from simvg.models.conv_stem import ConvStem
from simvg.models.encoders.base import Encoder, EncoderOutput, token_grid_mask
from simvg.models.encoders.relative_position import RelativePositionBias
from simvg.models.heads.position_encoding import sine_position_encoding
from simvg.models.pretrained import resolve_pretrained


class FactorizedEmbedding(nn.Module):
    """Word embeddings as (vocab x rank) @ (rank x hidden): the full vocabulary at a fraction
    of the parameters. ``from_embedding`` initialises it with a truncated SVD."""

    def __init__(self, num_embeddings: int, rank: int, hidden_size: int, padding_idx: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.project = nn.Linear(rank, hidden_size, bias=False)

    @classmethod
    def from_embedding(cls, weight: torch.Tensor, rank: int, padding_idx: int | None = None) -> FactorizedEmbedding:
        """Best rank-``rank`` approximation (truncated SVD) of a (vocab, hidden) weight."""
        module = cls(weight.shape[0], rank, weight.shape[1], padding_idx)
        u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        with torch.no_grad():
            module.embed.weight.copy_(u[:, :rank] * s[:rank])
            module.project.weight.copy_(vh[:rank].T)
        return module

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(input_ids))


def build_text_transformer(config: EncoderConfig, vocab_size: int, backbone_config: dict | None) -> BertModel:
    """A BERT-family model: from ``backbone_config`` (structure only, weights come later),
    from ``config.pretrained`` (weights downloaded or read locally), or random from sizes."""
    attention = {"attn_implementation": config.attention}
    if backbone_config is not None:
        hf_config = AutoConfig.for_model(**backbone_config)
        return AutoModel.from_config(hf_config, add_pooling_layer=False, **attention)
    if config.pretrained:
        source = resolve_pretrained(config.pretrained)
        try:
            # The configured dropout replaces the checkpoint's (MiniLM and BERT ship 0.1).
            dropout = {"hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout}
            model = AutoModel.from_pretrained(source, add_pooling_layer=False, **attention, **dropout)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load pretrained encoder '{config.pretrained}': no such local directory and "
                f"the hub is not reachable ({err})"
            ) from err
        if not hasattr(model, "embeddings") or not hasattr(model, "encoder"):
            raise ValueError(f"'{config.pretrained}' is not a BERT-family model (no embeddings/encoder)")
        if config.layers is not None:
            available = len(model.encoder.layer)
            bad = [i for i in config.layers if not 0 <= i < available]
            if bad:
                raise ValueError(f"encoder.layers {config.layers}: indices {bad} out of range (model has {available})")
            model.encoder.layer = nn.ModuleList([model.encoder.layer[i] for i in config.layers])
            model.config.num_hidden_layers = len(config.layers)
        return model
    hf_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=128,
        type_vocab_size=2,
    )
    hf_config._attn_implementation = config.attention
    return BertModel(hf_config, add_pooling_layer=False)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool keep mask (any shape, e.g. (B, 1, T, T)) -> float mask of that shape: 0 where kept,
    the dtype's minimum elsewhere; what both the eager and the sdpa attention add to scores."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


class HybridEncoder(Encoder):
    def __init__(
        self,
        config: EncoderConfig,
        image_size: int,
        vocab_size: int,
        backbone_config: dict | None = None,
    ):
        super().__init__(config.pixel_normalization)
        text_model = build_text_transformer(config, vocab_size, backbone_config)
        self.hf_config = text_model.config
        self.embeddings = text_model.embeddings
        self.layers = text_model.encoder.layer
        hidden = self.hf_config.hidden_size
        self.hidden_size = hidden
        self.fusion_layer = config.fusion_layer
        if config.embedding_rank is not None:
            word = self.embeddings.word_embeddings
            if backbone_config is None:  # fresh from pretrained weights: keep their best low-rank part
                factorized = FactorizedEmbedding.from_embedding(word.weight, config.embedding_rank, word.padding_idx)
            else:  # structure only; the weights come from a checkpoint
                factorized = FactorizedEmbedding(word.num_embeddings, config.embedding_rank, hidden, word.padding_idx)
            self.embeddings.word_embeddings = factorized
        if config.freeze_word_embeddings:
            self.embeddings.word_embeddings.requires_grad_(False)
        self.stem = ConvStem(config.stem_channels, config.stem_blocks)
        if config.stem_conv != "Conv":
            from distill.cheap_conv import convert_convs

            convert_convs(self.stem, config.stem_conv)
        self.visual_proj = nn.Conv2d(self.stem.out_channels, hidden, 1)
        # The projected stem features start tiny next to the position encoding (norm ~0.7 vs
        # ~14 at 384 dims), so the visual tokens would carry little but their position until
        # the projection grows; normalising them puts content and position on equal terms.
        self.content_norm = nn.LayerNorm(hidden)
        side = image_size // self.stem.stride
        self.grid = (side, side)
        self.visual_pos = nn.Parameter(torch.zeros(1, side * side, hidden))
        self.relative_position_bias = (
            RelativePositionBias(self.hf_config.num_attention_heads, self.grid) if config.relative_position_bias else None
        )
        self.object_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.visual_norm = nn.LayerNorm(hidden, eps=self.hf_config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        if config.visual_pos_init == "sine":
            with torch.no_grad():
                self.visual_pos.copy_(sine_position_encoding(self.grid, hidden)[None])
        else:
            nn.init.trunc_normal_(self.visual_pos, std=0.02)
        nn.init.trunc_normal_(self.object_token, std=0.02)
        # Visual tokens start with the same per-channel scale as the (pretrained) text
        # embeddings, so the pretrained attention sees inputs of the size it was trained on.
        self.visual_norm.load_state_dict(self.embeddings.LayerNorm.state_dict())

    def backbone_config(self) -> dict:
        """The transformer's HF config as a dict (saved in checkpoints to rebuild the structure)."""
        return self.hf_config.to_dict()

    def word_embedding_matrix(self) -> torch.Tensor:
        """(vocab, hidden) input embedding of every word (a factorised table multiplied out)."""
        words = self.embeddings.word_embeddings
        if isinstance(words, FactorizedEmbedding):
            return words.project(words.embed.weight)
        return words.weight

    def _visual_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.visual_pos
        pos = self.visual_pos.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).flatten(1, 2)

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> EncoderOutput:
        """images: (B, 3, S, S) uint8; pixel_mask: (B, S, S) bool; input_ids, text_mask: (B, L)."""
        batch = images.shape[0]
        text = self.embeddings(input_ids=input_ids)
        stem_features = self.stem(self.normalize(images))
        feature_map = self.visual_proj(stem_features[-1])
        grid = (feature_map.shape[2], feature_map.shape[3])
        visual_type = self.embeddings.token_type_embeddings.weight[1]
        content = self.content_norm(feature_map.flatten(2).transpose(1, 2))
        visual = content + self._visual_positions(grid) + visual_type
        obj = self.object_token.expand(batch, -1, -1) + visual_type
        visual = self.dropout(self.visual_norm(torch.cat([obj, visual], dim=1)))
        visual_mask = token_grid_mask(pixel_mask, grid)
        sequence = torch.cat([visual[:, :1], text, visual[:, 1:]], dim=1)
        ones = torch.ones(batch, 1, dtype=torch.bool, device=images.device)
        mask = torch.cat([ones, text_mask, visual_mask], dim=1)
        length = input_ids.shape[1]
        attention_mask = create_bidirectional_mask(config=self.hf_config, inputs_embeds=sequence, attention_mask=mask)
        position_bias = None
        if self.relative_position_bias is not None:
            position_bias = self.relative_position_bias(grid, 1 + length).to(sequence.dtype)
            attention_mask = additive_mask(mask[:, None, None, :], sequence.dtype) + position_bias
        separate_mask = None
        if self.fusion_layer > 0:
            is_text = torch.zeros(sequence.shape[1], dtype=torch.bool, device=images.device)
            is_text[1 : 1 + length] = True
            same_modality = is_text[:, None] == is_text[None, :]
            separate_mask = additive_mask(mask[:, None, None, :] & same_modality[None, None], sequence.dtype)
            if position_bias is not None:
                separate_mask = separate_mask + position_bias
        for index, layer in enumerate(self.layers):
            sequence = layer(sequence, separate_mask if index < self.fusion_layer else attention_mask)
        return EncoderOutput(
            object_token=sequence[:, 0],
            visual_tokens=sequence[:, 1 + length :],
            visual_mask=visual_mask,
            grid=grid,
            text_tokens=sequence[:, 1 : 1 + length],
            text_mask=text_mask,
            stem_features=stem_features,
            visual_content=content,
            text_embeddings=text,
        )
