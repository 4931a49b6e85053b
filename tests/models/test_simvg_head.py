"""The "simvg" head: SimVG's head as its official code runs it."""

import pytest
import torch

from simvg.config import ConfigError, EncoderConfig, HeadConfig, ModelConfig
from simvg.engine.import_official import map_official_state
from simvg.models import build_model
from simvg.models.heads.position_encoding import (
    detr_sine_position_encoding,
    simvg_text_position_encoding,
)
from simvg.models.heads.simvg_query_generation import SimVGQueryGenerator
from tests.models.test_model import inputs
from tests.official_simvg import (
    official_head_forward,
    official_head_layout,
    official_image_positions,
    official_text_positions,
    random_state,
)

WIDTH, DIM = 32, 32


def simvg_config(queries: int = 1, **head) -> ModelConfig:
    encoder = EncoderConfig(type="hybrid", pretrained=None, hidden_size=WIDTH, num_layers=1, num_heads=2,
                            intermediate_size=64, stem_channels=[8, 8, 16, 16], stem_blocks=[0, 1, 0, 1])  # fmt: skip
    fields = dict(type="simvg", hidden_dim=DIM, num_queries=queries, tqg_layers=2, tqg_heads=8, tqg_ffn=16,
                  decoder_layers=3, decoder_heads=8, decoder_ffn=64) | head  # fmt: skip
    return ModelConfig(image_size=64, encoder=EncoderConfig(**vars(encoder)), head=HeadConfig(**fields))


@pytest.mark.parametrize("queries", [1, 3])
def test_outputs_have_the_contract_shapes(queries):
    model = build_model(simvg_config(queries), vocab_size=30522)
    out = model.eval()(*inputs())
    token_shape = (2,) if queries == 1 else (2, queries)
    assert out["token"]["logits"].shape == (*token_shape, 2) and out["token"]["boxes"].shape == (*token_shape, 4)
    assert out["decoder"]["logits"].shape == (2, queries, 2) and out["decoder"]["boxes"].shape == (2, queries, 4)
    assert out["decoder"]["aux"] == []  # inference predicts from the last layer only
    for branch in ("token", "decoder"):
        boxes = out[branch]["boxes"]
        assert ((boxes >= 0) & (boxes <= 1)).all()
    assert "decoder" not in model(*inputs(), use_decoder=False)
    model.train()
    aux = model(*inputs())["decoder"]["aux"]
    assert len(aux) == 2 and aux[0]["boxes"].shape == (2, queries, 4)  # every earlier layer, for the aux loss


def test_head_weights_live_under_head_and_cells_options_are_refused():
    model = build_model(simvg_config(), vocab_size=30522)
    names = [n for n, _ in model.named_parameters() if not n.startswith("encoder.")]
    assert names and all(n.startswith("head.") for n in names)
    for option in ({"landmark_relation": True}, {"token_branches": 3}, {"reference_window": 3}):
        with pytest.raises(ConfigError, match="'cells' head"):
            HeadConfig(type="simvg", **option)
    with pytest.raises(ConfigError, match="model.head.type"):
        HeadConfig(type="detr")


@pytest.mark.parametrize("queries", [1, 2])
def test_head_gives_the_official_head_outputs_from_its_weights(queries):
    """SimVG's head weights (official names, random values) loaded through our key mapping give
    what the official forward pass (written out over those weights) gives, on a letterboxed
    image (padded visual tokens) and a padded phrase."""
    model = build_model(simvg_config(queries), vocab_size=30522).eval()
    state = random_state(official_head_layout(WIDTH, DIM, queries, 2, 16, 3, 64), seed=queries)
    mapped = map_official_state(state)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    assert set(mapped) == set(own)
    model.load_state_dict(mapped, strict=False)
    with torch.no_grad():
        encoded = model.encoder(*inputs())
        ours = model.heads(encoded)
    h, w = encoded.grid
    img_feat = encoded.visual_tokens.transpose(1, 2).reshape(2, WIDTH, h, w)
    img_pad = ~encoded.visual_mask.view(2, h, w)
    assert img_pad.any()  # the letterboxed image's padding takes part
    reference = official_head_forward(state, img_feat, encoded.object_token, encoded.text_tokens,
                                      ~encoded.text_mask, img_pad)  # fmt: skip
    token_logits, token_boxes = reference["token"]
    if queries == 1:
        token_logits, token_boxes = token_logits[:, 0], token_boxes[:, 0]
    torch.testing.assert_close(ours["token"]["logits"], token_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["token"]["boxes"], token_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["decoder"]["logits"], reference["decoder"][-1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["decoder"]["boxes"], reference["decoder"][-1][1], atol=1e-4, rtol=1e-4)


def test_query_generation_follows_the_official_layer_order():
    """TQG on random weights equals a plain re-implementation of the official one (zero target,
    query embedding as query position in every layer, text positions on the keys, final
    LayerNorm, + max-pooled text + query embedding)."""
    torch.manual_seed(0)
    generator = SimVGQueryGenerator(16, 3, 2, 4, 24, 0.1).eval()
    for p in generator.parameters():
        torch.nn.init.normal_(p, std=0.3)
    text = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    state = {"head.query_embed.weight": generator.query_embed.weight}
    for ours, theirs in (("norm", "post_norm_layer"),):
        state |= {f"head.text_guided_query_generation_transformer.{theirs}.{p}": getattr(generator.decoder, ours).__getattr__(p)
                  for p in ("weight", "bias")}  # fmt: skip
    parts = {"self_attn": "attentions.0.attn", "cross_attn": "attentions.1.attn", "linear1": "ffns.0.layers.0.0",
             "linear2": "ffns.0.layers.1", "norm1": "norms.0", "norm2": "norms.1", "norm3": "norms.2"}  # fmt: skip
    for name, value in generator.decoder.layers.state_dict().items():
        index, module, rest = name.split(".", 2)
        state[f"head.text_guided_query_generation_transformer.layers.{index}.{parts[module]}.{rest}"] = value
    from tests.official_simvg import _detr_decoder

    query_embed = generator.query_embed.weight[:, None].repeat(1, 2, 1)
    text_pos = official_text_positions(5, 16)[:, None].repeat(1, 2, 1)
    with torch.no_grad():
        hidden = _detr_decoder(state, "head.text_guided_query_generation_transformer", torch.zeros_like(query_embed),
                               text.transpose(0, 1), query_embed, text_pos, ~mask, heads=4)[-1]  # fmt: skip
        pooled = torch.stack([t[m].max(dim=0).values for t, m in zip(text, mask)])
        expected = hidden.transpose(0, 1) + pooled[:, None] + query_embed.transpose(0, 1)
        torch.testing.assert_close(generator(text, mask), expected, atol=1e-5, rtol=1e-5)


def test_position_encodings_are_simvgs():
    # SimVG's 1-D text positions: only channel 0/1 vary (its frequencies are cast to integers).
    torch.testing.assert_close(simvg_text_position_encoding(20, 256), official_text_positions(20, 256))
    expected = torch.zeros(7, 8)
    expected[:, 1::2] = 1.0
    expected[:, 0], expected[:, 1] = torch.arange(7.0).sin(), torch.arange(7.0).cos()
    torch.testing.assert_close(simvg_text_position_encoding(7, 8), expected)
    # 2-D: detrex's normalised sine encoding, padding (bottom rows, right columns) included.
    pad = torch.zeros(2, 4, 5, dtype=torch.bool)
    pad[0, :, 3:] = True
    pad[1, 3:, :] = True
    ours = detr_sine_position_encoding(~pad, 16)
    torch.testing.assert_close(ours, official_image_positions(pad, 16).flatten(2).transpose(1, 2))


def test_decoder_boxes_are_absolute():
    """A decoder box is the sigmoid of the box MLP's output alone: with the last layer's weights
    at zero and bias b, every query of every image says sigmoid(b), wherever it attends."""
    model = build_model(simvg_config(2), vocab_size=30522).eval()
    last = model.head.decoder_branch.box_head.layers[-1]
    bias = torch.tensor([0.3, -0.2, -1.0, 0.5])
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias)
        out = model(*inputs())
    torch.testing.assert_close(out["decoder"]["boxes"], bias.sigmoid().expand(2, 2, 4))
