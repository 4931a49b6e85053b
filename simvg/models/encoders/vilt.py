"""The ViLT encoder (Hugging Face ``ViltModel``), used single-stream as SimVG uses BEiT-3.

ViltModel's own embedding step samples image patches in a random order when the pixel
mask covers everything, which would lose the token grid. We therefore assemble the
embeddings from its modules in a fixed row-major order (patch embedding, position
embeddings interpolated to the input's grid as SimVG does, modality-type embeddings) and
run its transformer. The object token is ViLT's image CLS token.

ViltModel computes attention only as matmul + softmax; ``model.encoder.attention: sdpa``
runs the same query/key/value layers through ``F.scaled_dot_product_attention`` instead
(fused kernels on GPUs), with the same parameter names, so checkpoints load either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViltConfig, ViltModel
from transformers.masking_utils import create_bidirectional_mask

from simvg.config import EncoderConfig
from simvg.models.encoders.base import Encoder, EncoderOutput, token_grid_mask
from simvg.models.pretrained import resolve_pretrained


class SdpaSelfAttention(nn.Module):
    """A ViltSelfAttention's query, key and value layers run through
    ``F.scaled_dot_product_attention``. forward(hidden (B, L, D), attention_mask: additive
    float (B, 1, L, L) or None) -> (context (B, L, D),), as ViltSelfAttention returns."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.query, self.key, self.value = attention.query, attention.key, attention.value
        self.head_size = attention.attention_head_size
        self.dropout = attention.dropout.p

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor]:  # fmt: skip
        if output_attentions:
            raise ValueError("sdpa attention does not return attention weights; use model.encoder.attention=eager")
        shape = (*hidden.shape[:-1], -1, self.head_size)
        q, k, v = (layer(hidden).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                                 dropout_p=self.dropout if self.training else 0.0)  # fmt: skip
        return (context.transpose(1, 2).reshape(*hidden.shape[:-1], -1),)


def build_vilt(config: EncoderConfig, vocab_size: int, image_size: int, backbone_config: dict | None) -> ViltModel:
    model = _build_vilt(config, vocab_size, image_size, backbone_config)
    if config.attention == "sdpa":
        for layer in model.encoder.layer:
            layer.attention.attention = SdpaSelfAttention(layer.attention.attention)
    return model


def _build_vilt(config: EncoderConfig, vocab_size: int, image_size: int, backbone_config: dict | None) -> ViltModel:
    # Hugging Face's ViltModel knows "eager" attention only (sdpa is swapped in by build_vilt),
    # which also makes its attention masks additive floats, what SdpaSelfAttention takes.
    if backbone_config is not None:
        vilt_config = ViltConfig(**backbone_config)
        vilt_config._attn_implementation = "eager"
        return ViltModel(vilt_config, add_pooling_layer=False)
    if config.pretrained:
        source = resolve_pretrained(config.pretrained)
        try:
            model = ViltModel.from_pretrained(source, add_pooling_layer=False, attn_implementation="eager")
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load pretrained ViLT '{config.pretrained}': no such local directory and "
                f"the hub is not reachable ({err})"
            ) from err
        if config.layers is not None:
            available = len(model.encoder.layer)
            bad = [i for i in config.layers if not 0 <= i < available]
            if bad:
                raise ValueError(f"encoder.layers {config.layers}: indices {bad} out of range (model has {available})")
            model.encoder.layer = nn.ModuleList([model.encoder.layer[i] for i in config.layers])
            model.config.num_hidden_layers = len(config.layers)
        return model
    vilt_config = ViltConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        image_size=image_size,
        patch_size=config.patch_size,
        max_position_embeddings=40,
    )
    vilt_config._attn_implementation = "eager"
    return ViltModel(vilt_config, add_pooling_layer=False)


class ViltEncoder(Encoder):
    def __init__(self, config: EncoderConfig, image_size: int, vocab_size: int, backbone_config: dict | None = None):
        super().__init__(config.pixel_normalization)
        vilt = build_vilt(config, vocab_size, image_size, backbone_config)
        self.hf_config = vilt.config
        self.embeddings = vilt.embeddings
        self.encoder = vilt.encoder
        self.layernorm = vilt.layernorm
        self.hidden_size = self.hf_config.hidden_size
        self.patch_size = self.hf_config.patch_size
        if image_size % self.patch_size:
            raise ValueError(f"model.image_size {image_size} must be a multiple of ViLT's patch size {self.patch_size}")

    def backbone_config(self) -> dict:
        return self.hf_config.to_dict()

    def _patch_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        table = self.embeddings.position_embeddings  # (1, 1 + P*P, D)
        side = self.hf_config.image_size // self.patch_size
        spatial = table[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        if (side, side) != grid:
            spatial = F.interpolate(spatial, size=grid, mode="bilinear", align_corners=True)
        return spatial.flatten(2).transpose(1, 2)

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> EncoderOutput:
        """images: (B, 3, S, S) uint8; pixel_mask: (B, S, S) bool; input_ids, text_mask: (B, L)."""
        emb = self.embeddings
        batch, length = input_ids.shape
        if length > self.hf_config.max_position_embeddings:
            raise ValueError(
                f"phrase has {length} tokens; ViLT takes at most {self.hf_config.max_position_embeddings} "
                "(lower model.max_text_length)"
            )
        text = emb.text_embeddings(input_ids=input_ids)
        words = text
        patches = emb.patch_embeddings(self.normalize(images))
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2) + self._patch_positions(grid)
        cls = (emb.cls_token + emb.position_embeddings[:, :1]).expand(batch, -1, -1)
        visual = emb.dropout(torch.cat([cls, patches], dim=1))
        text = text + emb.token_type_embeddings(torch.zeros_like(input_ids))
        visual = visual + emb.token_type_embeddings.weight[1]
        visual_mask = token_grid_mask(pixel_mask, grid)
        sequence = torch.cat([text, visual], dim=1)
        ones = torch.ones(batch, 1, dtype=torch.bool, device=images.device)
        mask = torch.cat([text_mask, ones, visual_mask], dim=1)
        attention_mask = create_bidirectional_mask(config=self.hf_config, inputs_embeds=sequence, attention_mask=mask)
        sequence = self.layernorm(self.encoder(sequence, attention_mask=attention_mask).last_hidden_state)
        return EncoderOutput(
            object_token=sequence[:, length],
            visual_tokens=sequence[:, length + 1 :],
            visual_mask=visual_mask,
            grid=grid,
            text_tokens=sequence[:, :length],
            text_mask=text_mask,
            stem_features=[],
            text_embeddings=words,
        )
