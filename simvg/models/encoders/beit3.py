"""BEiT-3 (Wang et al., "Image as a Foreign Language", CVPR 2023), the encoder SimVG builds on.

A Multiway transformer as torchscale's ``BEiT3`` (the code Microsoft released its checkpoints
with): every layer attends over the whole sequence [vision CLS | image patches | text tokens]
at once, while each of its parameterised parts has two experts, ``A`` for the vision tokens
and ``B`` for the text tokens: the query/key/value/output projections and the LayerNorm
inside the attention (torchscale's "subln"), the pre-attention and pre-FFN LayerNorms, the
FFN (with its inner LayerNorm) and the final LayerNorm. (The paper describes a shared
attention; the released models decouple its parameters as well: BEiT-3's supplementary
material, section 11.) Pre-LayerNorm residual blocks, GELU, no embedding LayerNorm, no
relative positions. Learned absolute positions start at index 2 (fairseq's convention):
table ``A`` holds 2 unused rows, the CLS row and one row per patch; table ``B`` 1024 text rows.

Module and parameter names are torchscale's, so ``self.beit3.state_dict()`` has exactly the
keys of torchscale's ``BEiT3`` (and the model's ``encoder.beit3.<key>``), and released
checkpoints (``beit3.<key>`` in a torch file's ``model``) load by name. SimVG runs it at 640 px
with 32-px patches made from the released 16-px ones: :func:`interpolate_patch_kernel` and
:func:`interpolate_vision_positions`, as SimVG's loader does. docs/beit3.md has the details.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simvg.config import EncoderConfig
from simvg.models.encoders.base import Encoder, EncoderOutput, token_grid_mask

# Transformer sizes of the released models (the patch size is a field of its own: SimVG uses 32).
PRESETS = {
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
}
RELEASED_VOCAB_SIZE = 64010  # rows of the released text embedding (beit3.spm's ids, padded)
TEXT_POSITIONS = 1024  # torchscale's max_source_positions
POSITION_OFFSET = 2  # fairseq: the first position is 2; rows 0 and 1 of each table are never read
EXTRA_VISION_ROWS = POSITION_OFFSET + 1  # the rows before the patches' in table A (2 unused + CLS)
LAYERNORM_EPS = 1e-5
CHECKPOINT_PREFIX = "beit3."
# In released files but not in the encoder: torchscale's output layer, the masked-language-
# modelling head of pre-training (the pre-training files carry it; grounding never uses it).
PRETRAINING_ONLY = ("encoder.output_projection.",)


@dataclass
class BEiT3Structure:
    """What fixes the shapes of a BEiT-3 (saved as the checkpoint's backbone config).

    image_size, patch_size: pixels; the patch grid is (image_size / patch_size)^2.
    vocab_size: rows of the text embedding (at least the tokenizer's ids).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    vocab_size: int
    text_positions: int = TEXT_POSITIONS

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


class Multiway(nn.Module):
    """Two experts: ``A`` for the first ``split`` tokens of a sequence (vision), ``B`` for the rest (text).

    forward(x (B, T, ...), split) -> (B, T, ...)
    """

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.A = a
        self.B = b

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


def multiway_layer_norm(dim: int) -> Multiway:
    return Multiway(nn.LayerNorm(dim, eps=LAYERNORM_EPS), nn.LayerNorm(dim, eps=LAYERNORM_EPS))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's whole branch with probability ``rate``, scale the kept by 1/(1-rate)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class MultiwayAttention(nn.Module):
    """Self-attention over the whole sequence with per-modality projections (torchscale's
    MultiheadAttention with multiway and subln).

    forward(x (B, T, D), split, padding (B, T) bool, True on padding) -> (B, T, D)
    """

    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"BEiT-3 hidden size {dim} is not a multiple of its {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.attention = attention
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            setattr(self, name, Multiway(nn.Linear(dim, dim), nn.Linear(dim, dim)))
        self.inner_attn_ln = multiway_layer_norm(dim)

    def forward(self, x: torch.Tensor, split: int, padding: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (proj(x, split).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, None, :])
        else:  # torchscale's order of operations: scaled query, -inf on padded keys, float32 softmax
            scores = (q * self.scaling) @ k.transpose(-1, -2)
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
            out = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores) @ v
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(self.inner_attn_ln(out, split), split)


class FeedForward(nn.Module):
    """fc1 -> GELU (in float32) -> LayerNorm (subln) -> fc2 -> dropout; (..., D) -> (..., D)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=LAYERNORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = F.gelu(x.float()).type_as(x)
        return self.dropout(self.fc2(self.ffn_layernorm(x)))


class MultiwayLayer(nn.Module):
    """A pre-LayerNorm block: x + attention(LN(x)), then x + FFN(LN(x)), every part multiway.

    forward(x (B, T, D), split, padding (B, T) bool) -> (B, T, D)
    """

    def __init__(self, s: BEiT3Structure, dropout: float, drop_path_rate: float, attention: str):
        super().__init__()
        dim = s.hidden_size
        self.self_attn = MultiwayAttention(dim, s.num_heads, attention)
        self.self_attn_layer_norm = multiway_layer_norm(dim)
        self.ffn = Multiway(*(FeedForward(dim, s.intermediate_size, dropout) for _ in range(2)))
        self.final_layer_norm = multiway_layer_norm(dim)
        self.dropout = nn.Dropout(dropout)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, split: int, padding: torch.Tensor) -> torch.Tensor:
        attended = self.dropout(self.self_attn(self.self_attn_layer_norm(x, split), split, padding))
        x = x + drop_path(attended, self.drop_path_rate, self.training)
        transformed = self.ffn(self.final_layer_norm(x, split), split)
        return x + drop_path(transformed, self.drop_path_rate, self.training)


class VisionEmbedding(nn.Module):
    """Patch projection and CLS token: (B, 3, H, W) normalised pixels -> (B, 1 + h*w, D).

    ``mask_token`` (BEiT-3's masked-image-modelling token) is kept as a buffer so that the
    released state dicts load by name; grounding never masks patches.
    """

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("mask_token", torch.zeros(1, 1, dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.proj(pixels).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)


class MultiwayEncoder(nn.Module):
    """Positions, the layers and the final LayerNorm (torchscale's ``Encoder`` as BEiT-3 configures it).

    forward(tokens (B, T, D), split, padding (B, T) bool, grid) -> (B, T, D): the first
    ``split`` tokens are [CLS | patches of ``grid``], the rest text.
    """

    def __init__(self, s: BEiT3Structure, dropout: float, drop_path_rate: float, attention: str):
        super().__init__()
        h, w = s.grid
        self.grid = s.grid
        self.embed_positions = Multiway(nn.Embedding(EXTRA_VISION_ROWS + h * w, s.hidden_size),
                                        nn.Embedding(s.text_positions, s.hidden_size))  # fmt: skip
        rates = [drop_path_rate * i / max(s.num_layers - 1, 1) for i in range(s.num_layers)]  # 0 to rate
        self.layers = nn.ModuleList([MultiwayLayer(s, dropout, rate, attention) for rate in rates])
        self.layer_norm = multiway_layer_norm(s.hidden_size)
        self.dropout = nn.Dropout(dropout)

    def vision_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, D): the CLS row and the patch rows, interpolated if ``grid`` is not the table's."""
        table = self.embed_positions.A.weight
        if grid != self.grid:
            table = interpolate_vision_positions(table, grid)
        return table[POSITION_OFFSET:]

    def text_positions(self, length: int) -> torch.Tensor:
        """(length, D)."""
        available = self.embed_positions.B.num_embeddings - POSITION_OFFSET
        if length > available:
            raise ValueError(
                f"phrase has {length} tokens; BEiT-3 takes at most {available} (lower model.max_text_length)"
            )
        return self.embed_positions.B.weight[POSITION_OFFSET : POSITION_OFFSET + length]

    def forward(
        self, tokens: torch.Tensor, split: int, padding: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        positions = torch.cat(
            [self.vision_positions(grid), self.text_positions(tokens.shape[1] - split)]
        )
        x = self.dropout(tokens + positions)
        x = x * (~padding)[..., None].to(x.dtype)  # padded tokens start at zero, as in torchscale
        for layer in self.layers:
            x = layer(x, split, padding)
        return self.layer_norm(x, split)


class BEiT3(nn.Module):
    """The backbone, named as torchscale's ``BEiT3``: ``text_embed``, ``vision_embed``, ``encoder``.

    forward(pixels (B, 3, H, W) normalised, input_ids (B, L), text_padding (B, L) bool,
    vision_padding (B, h*w) bool or None; True marks padding) -> (B, 1 + h*w + L, D), the
    sequence [vision CLS | patches row-major | text] after the final LayerNorm.
    """

    def __init__(
        self,
        s: BEiT3Structure,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        attention: str = "eager",
    ):
        super().__init__()
        if s.image_size % s.patch_size:
            raise ValueError(
                f"model.image_size {s.image_size} must be a multiple of BEiT-3's patch size {s.patch_size}"
            )
        self.text_embed = nn.Embedding(s.vocab_size, s.hidden_size)
        self.vision_embed = VisionEmbedding(s.patch_size, s.hidden_size)
        self.encoder = MultiwayEncoder(s, dropout, drop_path_rate, attention)
        self._init_weights(s.hidden_size)

    @torch.no_grad()
    def _init_weights(self, dim: int) -> None:
        """Random weights as SimVG's BEiT-3 gets them before its checkpoint loads: linear layers
        truncated normal (std 0.02, cut at one std), zero biases, unit LayerNorms; text
        embedding N(0, 1/D) (torchscale's); positions N(0, 1) and the patch convolution as
        PyTorch initialises them; CLS token zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _truncated_normal(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.text_embed.weight, std=dim**-0.5)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, text_padding: torch.Tensor,
                vision_padding: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        vision = self.vision_embed(pixels)
        grid = (
            pixels.shape[2] // self.vision_embed.proj.stride[0],
            pixels.shape[3] // self.vision_embed.proj.stride[1],
        )
        if vision_padding is None:
            vision_padding = torch.zeros(vision.shape[:2], dtype=torch.bool, device=vision.device)
        else:
            vision_padding = torch.cat(
                [vision_padding.new_zeros(vision.shape[0], 1), vision_padding], dim=1
            )
        tokens = torch.cat([vision, self.text_embed(input_ids)], dim=1)
        padding = torch.cat([vision_padding, text_padding], dim=1)
        return self.encoder(tokens, vision.shape[1], padding, grid)


def interpolate_vision_positions(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Table A (3 + g*g, D) -> (3 + h*w, D) for ``grid`` = (h, w): the first 3 rows (two unused,
    CLS) kept, the patch rows resized bicubically (align_corners=False) as SimVG does."""
    patches = table.shape[0] - EXTRA_VISION_ROWS
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"BEiT-3 position table has {patches} patch rows, not a square grid")
    if (side, side) == tuple(grid):
        return table
    spatial = table[EXTRA_VISION_ROWS:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    spatial = F.interpolate(spatial, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat(
        [table[:EXTRA_VISION_ROWS], spatial.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)]
    )


def interpolate_patch_kernel(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch projection (D, 3, p, p) -> (D, 3, patch_size, patch_size), resized bicubically
    (align_corners=False) as SimVG makes its 32-px patches from the released 16-px ones. The
    values are not rescaled (SimVG does not): a kernel twice as wide sums 4x the pixels."""
    if weight.shape[-1] == patch_size and weight.shape[-2] == patch_size:
        return weight
    resized = F.interpolate(
        weight.float(), size=(patch_size, patch_size), mode="bicubic", align_corners=False
    )
    return resized.to(weight.dtype)


def released_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The BEiT-3 weights of a released-format torch file: its ``model`` (or ``module``, or the
    file's own top-level dict) entries under ``beit3.``, with the prefix removed. Other entries
    (a fine-tuned task's heads, the pre-training heads ``mim_head`` and
    ``beit3.encoder.output_projection``) are left out."""
    from simvg.engine.torch_files import TorchFileError, load_torch_file

    content = load_torch_file(path)
    state = next(
        (content[key] for key in ("model", "module") if isinstance(content.get(key), dict)), content
    )
    weights = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items()
               if isinstance(k, str) and k.startswith(CHECKPOINT_PREFIX)}  # fmt: skip
    weights = {k: v for k, v in weights.items() if not k.startswith(PRETRAINING_ONLY)}
    if not weights:
        sample = ", ".join(str(k) for k in list(state)[:5])
        raise TorchFileError(
            f"{path}: no '{CHECKPOINT_PREFIX}' weights (not a BEiT-3 checkpoint? its keys start: {sample})"
        )
    bad = [k for k, v in weights.items() if not torch.is_tensor(v)]
    if bad:
        raise TorchFileError(
            f"{path}: entries that are not tensors: {', '.join(CHECKPOINT_PREFIX + k for k in bad[:5])}"
        )
    return weights


def _listed(what: str, items: list[str], most: int = 8) -> str:
    return f"{what}: " + "; ".join(items[:most]) + (" ..." if len(items) > most else "")


def load_released_weights(model: BEiT3, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load :func:`released_state_dict` ``weights`` (read from ``path``) into ``model``,
    resizing the patch kernel and the vision positions to the model's patch size and grid.
    Raises ValueError naming ``path`` and listing missing, unexpected and mis-shaped keys if
    the weights do not fit the model's sizes."""
    weights = dict(weights)
    proj = weights.get("vision_embed.proj.weight")
    if proj is not None and proj.dim() == 4:
        weights["vision_embed.proj.weight"] = interpolate_patch_kernel(
            proj, model.vision_embed.proj.kernel_size[0]
        )
    positions = weights.get("encoder.embed_positions.A.weight")
    if positions is not None and positions.dim() == 2 and positions.shape[0] > EXTRA_VISION_ROWS:
        weights["encoder.embed_positions.A.weight"] = interpolate_vision_positions(
            positions, model.encoder.grid
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [f"{k}: file {tuple(weights[k].shape)}, model {tuple(v.shape)}"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or mismatched:
        problems = [_listed(f"{len(keys)} {what}", keys) for what, keys in
                    (("shapes differ", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys]  # fmt: skip
        raise ValueError(f"{path} does not fit the configured BEiT-3 (model.encoder.preset or the size fields; keys "
                         f"as in the file without '{CHECKPOINT_PREFIX}'): " + " | ".join(problems))  # fmt: skip
    model.load_state_dict(weights)


class BEiT3Encoder(Encoder):
    """``model.encoder.type: beit3``: the :class:`BEiT3` backbone as ``self.beit3``, on uint8
    images (normalised with ImageNet's mean/std unless ``pixel_normalization`` says otherwise,
    as SimVG feeds it) and phrases tokenised by BEiT-3's sentencepiece model.

    Sizes: ``config.preset`` ("base", "large") or the size fields; ``patch_size`` and
    ``model.image_size`` fix the grid. Weights: random, or ``config.pretrained`` (a released
    torch file; its patch kernel and positions are resized to this patch size and grid), or a
    checkpoint's (``backbone_config`` given: structure only). Text vocabulary: the file's rows,
    BEiT-3's 64010 for a preset, else the tokenizer's ``vocab_size``.
    """

    default_pixel_normalization = "imagenet"

    def __init__(
        self,
        config: EncoderConfig,
        image_size: int,
        vocab_size: int,
        backbone_config: dict | None = None,
    ):
        super().__init__(config.pixel_normalization)
        pretrained = None if backbone_config is not None else config.pretrained
        if pretrained == "minilm-l6":
            raise ValueError("model.encoder.pretrained is 'minilm-l6' (the hybrid's default); beit3 takes a BEiT-3 "
                             "torch file (.pth or .zip, docs/beit3.md) or null for random weights")  # fmt: skip
        if backbone_config is not None:
            structure = BEiT3Structure(**backbone_config)
        else:
            sizes = PRESETS[config.preset] if config.preset else {
                "hidden_size": config.hidden_size, "num_layers": config.num_layers,
                "num_heads": config.num_heads, "intermediate_size": config.intermediate_size}  # fmt: skip
            weights = released_state_dict(pretrained) if pretrained else None
            rows = RELEASED_VOCAB_SIZE if config.preset else vocab_size
            if weights is not None:
                text = weights.get("text_embed.weight")
                if text is None or text.dim() != 2:
                    raise ValueError(
                        f"{pretrained}: no 2-D '{CHECKPOINT_PREFIX}text_embed.weight' (the text embedding)"
                    )
                rows = text.shape[0]
            if vocab_size > rows:
                raise ValueError(f"the tokenizer has {vocab_size} ids but the BEiT-3 text embedding has {rows} rows"
                                 + (f" ({pretrained})" if pretrained else ""))  # fmt: skip
            structure = BEiT3Structure(
                **sizes, patch_size=config.patch_size, image_size=image_size, vocab_size=rows
            )
        self.beit3 = BEiT3(structure, config.dropout, config.drop_path, config.attention)
        if pretrained:
            load_released_weights(self.beit3, weights, pretrained)
        if config.layers is not None and backbone_config is None:
            available = len(self.beit3.encoder.layers)
            bad = [i for i in config.layers if not 0 <= i < available]
            if bad:
                raise ValueError(
                    f"encoder.layers {config.layers}: indices {bad} out of range (model has {available})"
                )
            self.beit3.encoder.layers = nn.ModuleList(
                [self.beit3.encoder.layers[i] for i in config.layers]
            )
            structure.num_layers = len(config.layers)
        self.structure = structure
        self.hidden_size = structure.hidden_size

    def backbone_config(self) -> dict:
        return asdict(self.structure)

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> EncoderOutput:
        """images: (B, 3, S, S) uint8; pixel_mask: (B, S, S) bool; input_ids, text_mask: (B, L).

        Patches with no image pixel (letterbox padding) are left out of attention as keys, as
        padded text tokens are (SimVG stretches its images, so it has none).
        """
        patch = self.structure.patch_size
        grid = (images.shape[2] // patch, images.shape[3] // patch)
        visual_mask = token_grid_mask(pixel_mask, grid)
        sequence = self.beit3(self.normalize(images), input_ids, ~text_mask, ~visual_mask)
        split = 1 + grid[0] * grid[1]
        words = self.beit3.text_embed(input_ids) + self.beit3.encoder.text_positions(
            input_ids.shape[1]
        )
        return EncoderOutput(
            object_token=sequence[:, 0],
            visual_tokens=sequence[:, 1:split],
            visual_mask=visual_mask,
            grid=grid,
            text_tokens=sequence[:, split:],
            text_mask=text_mask,
            stem_features=[],
            text_embeddings=words,
        )


def _truncated_normal(tensor: torch.Tensor, std: float) -> None:
    """N(0, std^2) cut at one std, drawn by the inverse CDF in one pass. torch's
    ``nn.init.trunc_normal_`` redraws out-of-range values in a loop, which with bounds at one
    std took 0.8 s for each 3072 x 768 matrix here (about 2.5 minutes for BEiT-3-B)."""
    low, high = (1 + math.erf(-1 / math.sqrt(2))) / 2, (1 + math.erf(1 / math.sqrt(2))) / 2
    tensor.uniform_(2 * low - 1, 2 * high - 1).erfinv_().mul_(std * math.sqrt(2)).clamp_(-std, std)
