from dataclasses import replace

import pytest
import torch
from transformers import ViltConfig, ViltModel

from simvg.config import EncoderConfig, HeadConfig, LossConfig, ModelConfig
from simvg.models import GroundingCriterion, build_model
from simvg.models.criterion import match_queries
from simvg.models.encoders import ENCODERS
from simvg.models.encoders.hybrid import FactorizedEmbedding
from simvg.models.pretrained import load_tokenizer, minilm_directory

TINY_HEAD = HeadConfig(hidden_dim=32, tqg_layers=1, tqg_heads=2, tqg_ffn=32, decoder_layers=2, decoder_heads=2, decoder_ffn=32)


def tiny_config(kind: str, **encoder) -> ModelConfig:
    base = dict(type=kind, pretrained=None, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                stem_channels=[8, 8, 16, 16], stem_blocks=[0, 1, 0, 1], patch_size=16)  # fmt: skip
    return ModelConfig(image_size=64, encoder=EncoderConfig(**(base | encoder)), head=replace(TINY_HEAD))


def inputs(batch: int = 2, size: int = 64, length: int = 5):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    pixel_mask = torch.ones(batch, size, size, dtype=torch.bool)
    pixel_mask[0, :, size // 2 :] = False  # the first image is letterboxed: right half is padding
    input_ids = torch.randint(1000, 2000, (batch, length))
    text_mask = torch.ones(batch, length, dtype=torch.bool)
    text_mask[1, -2:] = False
    return images, pixel_mask, input_ids, text_mask


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_every_encoder_gives_boxes_from_both_branches(kind):
    model = build_model(tiny_config(kind), vocab_size=30522).eval()
    out = model(*inputs())
    assert out["token"]["logits"].shape == (2, 2) and out["token"]["boxes"].shape == (2, 4)
    assert out["decoder"]["logits"].shape == (2, 1, 2) and out["decoder"]["boxes"].shape == (2, 1, 4)
    assert ((out["token"]["boxes"] >= 0) & (out["token"]["boxes"] <= 1)).all()
    assert "decoder" not in model(*inputs(), use_decoder=False)
    encoded = model.encoder(*inputs())
    grid = (4, 4)  # 64 px / stride 16
    assert encoded.grid == grid and encoded.visual_tokens.shape == (2, 16, 32)
    # Tokens over padding are masked: the right half of image 0's grid.
    assert encoded.visual_mask[0].reshape(grid)[:, 2:].sum() == 0 and encoded.visual_mask[1].all()


def test_criterion_zero_box_loss_for_perfect_predictions_and_dwbd_weight():
    criterion = GroundingCriterion(LossConfig())
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    confident = torch.tensor([[[8.0, -8.0]], [[8.0, -8.0]]])
    ref_logits = torch.full((2, 16), -10.0)
    ref_logits[0, 2 * 4 + 2] = ref_logits[1, 2 * 4 + 1] = 10.0  # the cells holding the centres
    outputs = {
        "token": {"logits": torch.tensor([[8.0, -8.0]] * 2), "boxes": targets.clone(), "ref_logits": ref_logits,
                  "cell_boxes": targets[:, None].expand(-1, 16, -1).clone()},
        "decoder": {"logits": confident, "boxes": targets[:, None].clone(), "aux": []},
        "grid": (4, 4),
    }
    losses, stats = criterion(outputs, targets)
    for key in ("loss_tok_l1", "loss_tok_giou", "loss_dec_l1", "loss_dec_giou", "loss_tok_kd_l1", "loss_tok_ref"):
        assert float(losses[key]) == pytest.approx(0.0, abs=1e-4)
    assert stats["dwbd_weight"] == pytest.approx(1.0, abs=1e-4)  # fg prob ~1, IoU 1
    # A decoder box that misses: w = fg * IoU = 0 -> the token branch learns from GT only.
    outputs["decoder"]["boxes"] = torch.tensor([[[0.1, 0.1, 0.05, 0.05]], [[0.9, 0.9, 0.05, 0.05]]])
    losses, stats = criterion(outputs, targets)
    assert stats["dwbd_weight"] == pytest.approx(0.0, abs=1e-6)
    assert set(losses) <= set(criterion.weight_dict) | set(criterion.decoder_weight_dict(1))


def test_token_box_loss_trains_the_cells_on_the_target():
    from simvg.models.criterion import cell_box_losses, positive_cells

    grid = (4, 4)
    targets = torch.tensor([[0.5, 0.5, 0.6, 0.6], [0.3, 0.6, 0.1, 0.1]])
    positives = positive_cells(targets, grid)
    # A large box: the 4 cells whose centres it covers (the centre cell among them); a small
    # box covering no cell centre: just the cell holding its centre.
    assert positives[0].reshape(grid)[1:3, 1:3].all() and positives[0].sum() == 4
    assert positives[1].nonzero().flatten().tolist() == [2 * 4 + 1]
    cells = torch.rand(2, 16, 4) * 0.5 + 0.25
    cells[positives] = targets[positives.nonzero()[:, 0]]
    l1, giou = cell_box_losses(cells, targets, positives)
    # torchvision's GIoU divides by the union plus 1e-7: the 0.1 x 0.1 box's exact match still
    # costs ~1e-5, by design and on every CPU.
    assert float(l1) == pytest.approx(0.0, abs=1e-5) and float(giou) == pytest.approx(0.0, abs=1e-4)
    # Cells off the target do not count; a wrong positive cell does, weighted within its sample.
    cells[1, 2 * 4 + 1] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    l1, _ = cell_box_losses(cells, targets, positives)
    assert float(l1) == pytest.approx((0.6 + 0.3) / 2, abs=1e-5)


def test_cell_detail_gives_each_token_cell_its_sub_cells():
    from simvg.models.grounding_model import cell_detail

    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    detail = cell_detail(features, (2, 2))
    assert detail.shape == (2, 4, 12)
    # Cell (row 1, col 0) of image 1 holds rows 2-3, columns 0-1 of every channel.
    want = features[1, :, 2:4, 0:2].reshape(-1)
    assert sorted(detail[1, 2].tolist()) == sorted(want.tolist())
    # A map one short of twice the grid (odd sizes) is zero-padded, not cropped.
    odd = cell_detail(torch.ones(1, 1, 3, 3), (2, 2))
    assert odd.shape == (1, 4, 4) and float(odd.sum()) == 9.0


def test_matching_picks_the_best_query():
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.52, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 2)
    assert match_queries(logits, boxes, targets, LossConfig()).tolist() == [1]


def test_hybrid_loads_packaged_minilm_and_keeps_chosen_layers():
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(minilm_directory()))
    config = ModelConfig(image_size=64, encoder=EncoderConfig(pretrained="minilm-l6", layers=[0, 5],
                                                              stem_channels=[8, 8, 8, 8]), head=TINY_HEAD)  # fmt: skip
    model = build_model(config, vocab_size=30522)
    assert len(model.encoder.layers) == 2
    for ours, theirs in zip(model.encoder.layers, [reference.encoder.layer[0], reference.encoder.layer[5]]):
        assert torch.equal(ours.output.dense.weight, theirs.output.dense.weight)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    assert model.encoder.backbone_config()["num_hidden_layers"] == 2


def test_vilt_loads_from_a_local_directory(tmp_path):
    vilt = ViltModel(ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                image_size=64, patch_size=16, max_position_embeddings=40))  # fmt: skip
    vilt.save_pretrained(tmp_path / "vilt")
    model = build_model(tiny_config("vilt", pretrained=str(tmp_path / "vilt")), vocab_size=30522)
    assert torch.equal(model.encoder.encoder.layer[1].output.dense.weight, vilt.encoder.layer[1].output.dense.weight)
    out = model.eval()(*inputs())
    assert out["token"]["boxes"].shape == (2, 4)


def test_unreachable_pretrained_names_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        build_model(tiny_config("vilt", pretrained="no-such-org/no-such-model"), vocab_size=30522)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_model(tiny_config("hybrid", pretrained=str(tmp_path / "empty")), vocab_size=30522)


def test_factorized_embedding_is_the_best_low_rank_approximation():
    weight = torch.randn(50, 8)
    full = FactorizedEmbedding.from_embedding(weight, rank=8)
    ids = torch.arange(50)
    assert torch.allclose(full(ids), weight, atol=1e-4)
    low = FactorizedEmbedding.from_embedding(weight, rank=4)
    error = (low(ids) - weight).norm()
    singular = torch.linalg.svdvals(weight)
    assert float(error.detach()) == pytest.approx(float(singular[4:].norm()), rel=1e-3)


def test_one_token_head_runs_all_branches_in_training_and_the_deployed_one_at_inference():
    config = tiny_config("hybrid")
    config.head.token_branches = 3
    config.head.deploy_branch = 1
    model = build_model(config, vocab_size=30522)
    out = model.train()(*inputs())["token"]
    assert len(out["branches"]) == 3 and out["gate"].shape == (2, 3)
    assert torch.allclose(out["gate"].sum(1), torch.ones(2))
    out = model.eval()(*inputs())["token"]
    assert len(out["branches"]) == 1 and out["gate"] is None
    # Keeping only the deployed branch changes nothing at inference and drops the rest.
    before = sum(p.numel() for p in model.parameters())
    model.keep_deployed_branch()
    assert config.head.token_branches == 1 and sum(p.numel() for p in model.parameters()) < before
    assert torch.allclose(model(*inputs())["token"]["boxes"], out["boxes"])


def test_tokenizer_alias_is_bert_uncased():
    tokenizer = load_tokenizer("minilm-l6")
    assert tokenizer.tokenize("The Red Circle") == ["the", "red", "circle"]


def test_hybrid_visual_positions_start_as_a_sine_encoding():
    from simvg.models.heads.position_encoding import sine_position_encoding

    pos = build_model(tiny_config("hybrid"), vocab_size=30522).encoder.visual_pos[0].detach()
    assert torch.allclose(pos, sine_position_encoding((4, 4), 32))
    distances = torch.cdist(pos, pos) + torch.eye(16) * 1e3
    assert distances.min() > 0.1  # every grid cell starts with its own position
    noise = build_model(tiny_config("hybrid", visual_pos_init="random"), vocab_size=30522).encoder.visual_pos
    assert float(noise.detach().std()) < 0.05


def test_configured_dropout_replaces_the_pretrained_checkpoints():
    from simvg.models.encoders.hybrid import build_text_transformer

    model = build_text_transformer(EncoderConfig(type="hybrid", pretrained="minilm-l6", dropout=0.0), 30522, None)
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0


def test_token_box_comes_from_the_cells_at_the_attention_peak_not_between_objects():
    from simvg.models.heads.grid import grid_centres
    from simvg.models.heads.token_branch import TokenBranch, local_soft_argmax

    grid = (8, 8)
    logits = torch.full((1, 64), -10.0)
    logits[0, 1 * 8 + 1] = 5.0  # two candidates, far apart; the first slightly preferred
    logits[0, 6 * 8 + 6] = 4.9
    weights = local_soft_argmax(logits, grid, window=3)
    assert torch.allclose(weights.sum(-1), torch.ones(1))
    assert weights[0, 6 * 8 + 6] == 0
    # The whole-grid expectation lands between the two, on neither.
    between = logits.softmax(-1) @ grid_centres(grid)
    assert (between - grid_centres(grid)[9]).abs().max() > 0.2

    torch.manual_seed(0)
    token, visual, mask = torch.randn(2, 16), torch.randn(2, 64, 16), torch.ones(2, 64, dtype=torch.bool)
    branch = TokenBranch(16, reference_window=1).eval()
    torch.nn.init.normal_(branch.box_head.layers[-1].weight)  # cells propose different boxes
    out = branch(token, visual, mask, grid, all_cells=True)
    peak = out["ref_logits"].argmax(-1)
    assert torch.equal(out["boxes"], out["cell_boxes"][torch.arange(2), peak])
    # By default inference regresses the peak cell only: the same answer, no per-cell boxes.
    fast = branch(token, visual, mask, grid)
    assert "cell_boxes" not in fast and torch.allclose(fast["boxes"], out["boxes"], atol=1e-6)
    assert torch.allclose(fast["logits"], out["logits"], atol=1e-6)
    # Each cell's box is placed relative to that cell.
    assert out["cell_boxes"].shape == (2, 64, 4)
    offsets = (out["cell_boxes"][..., :2] - grid_centres(grid)) * 8
    assert torch.allclose(offsets, branch.box_head(visual + branch.condition(token)[:, None])[..., :2], atol=1e-5)
    # Window 3 mixes the boxes of the peak's neighbours only.
    windowed = TokenBranch(16, reference_window=3).eval()
    windowed.load_state_dict(branch.state_dict())
    near = local_soft_argmax(out["ref_logits"], grid, 3)
    expected = torch.einsum("bn,bnc->bc", near, out["cell_boxes"])
    assert torch.allclose(windowed(token, visual, mask, grid)["boxes"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="reference_window"):
        TokenBranch(16, reference_window=2)


def test_inference_regresses_only_the_answers_cell_with_the_same_result():
    config = tiny_config("hybrid")
    config.head.token_branches = 2
    config.head.deploy_branch = None  # the gated ensemble of both branches
    model = build_model(config, vocab_size=30522).eval()
    for branch in model.token_head.one.branches:  # cells propose different boxes
        torch.nn.init.normal_(branch.box_head.layers[-1].weight)
    calls = []
    model.detail_proj.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    full = model(*inputs(), all_cells=True)["token"]
    fast = model(*inputs())["token"]
    assert calls == [16, 1, 1]  # every cell once (shared by both branches), then each answer's cell only
    assert full["cell_boxes"].shape == (2, 16, 4) and "cell_boxes" not in fast
    assert torch.allclose(fast["boxes"], full["boxes"], atol=1e-5)
    assert torch.allclose(fast["logits"], full["logits"], atol=1e-5)
    with torch.inference_mode():
        folded = model(*inputs())["token"]
    assert torch.allclose(folded["boxes"], full["boxes"], atol=1e-5)
    assert "cell_boxes" in model.train()(*inputs())["token"]


@pytest.mark.parametrize("num_queries", [1, 3])
def test_query_generator_is_the_torch_transformer_decoder_it_holds(num_queries):
    from simvg.models.heads.query_generation import TextGuidedQueryGenerator, masked_max_pool

    torch.manual_seed(0)
    generator = TextGuidedQueryGenerator(16, num_queries, num_layers=2, num_heads=4, ffn_dim=32, dropout=0.0)
    text = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    queries = generator.query_embed.weight[None].expand(2, -1, -1)
    for mode in (True, False):
        generator.train(mode)
        reference = generator.decoder(queries, text, memory_key_padding_mask=~mask)
        expected = reference + masked_max_pool(text, mask)[:, None] + queries
        assert torch.allclose(generator(text, mask), expected, atol=1e-5)
    # Inference (eval, no autograd) computes the weight-only parts once and folds the later
    # layers' single-query self-attention; a weight update is picked up.
    for _ in range(2):
        expected = generator.decoder(queries, text, memory_key_padding_mask=~mask)
        expected = expected + masked_max_pool(text, mask)[:, None] + queries
        with torch.inference_mode():
            assert torch.allclose(generator(text, mask), expected, atol=1e-5)
        with torch.no_grad():
            for param in generator.parameters():
                param.mul_(1.1)
    # Padding is ignored: changing the padded text tokens changes nothing but the max-pool input.
    changed = text.clone()
    changed[1, 3:] = 100.0
    assert torch.allclose(generator(changed, mask)[1], generator(text, mask)[1], atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_relative_position_bias_reads_each_offsets_entry_and_trains(attention):
    plain = build_model(tiny_config("hybrid", attention=attention), vocab_size=30522).eval()
    biased = build_model(tiny_config("hybrid", attention=attention, relative_position_bias=True), vocab_size=30522)
    biased.eval()
    missing = biased.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["encoder.relative_position_bias.table"]
    table = biased.encoder.relative_position_bias.table
    assert table.shape == (2, 7, 7)  # 2 heads, offsets -3..3 on a 4x4 grid
    # ALiBi in 2-D: no penalty at offset 0, growing with distance, steeper for the first head.
    assert (table[:, 3, 3] == 0).all() and (table[:, 3, 4] > table[:, 3, 6]).all() and table[0, 0, 0] < table[1, 0, 0]
    with torch.no_grad():
        table.zero_()
    # A zero table computes what the model computed without it (padded text and image too).
    assert torch.allclose(biased(*inputs())["token"]["boxes"], plain(*inputs())["token"]["boxes"], atol=1e-5)
    biased.encoder(*inputs()).visual_tokens.square().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    # Each pair of visual tokens reads the entry of its offset; text and object pairs get none.
    with torch.no_grad():
        table.copy_(torch.arange(table.numel(), dtype=torch.float32).reshape(table.shape))
    bias = biased.encoder.relative_position_bias((4, 4), num_leading=3)
    assert bias.shape == (1, 2, 19, 19) and bias[:, :, :3].abs().sum() == 0 and bias[:, :, :, :3].abs().sum() == 0
    query, key = 3 + 1 * 4 + 2, 3 + 3 * 4 + 0  # cell (1, 2) -> cell (3, 0): offset dy=+2, dx=-2
    assert bias[0, 1, query, key] == table[1, 2 + 3, -2 + 3]
    changed = biased.encoder(*inputs()).visual_tokens
    assert not torch.allclose(changed, plain.encoder(*inputs()).visual_tokens, atol=1e-3)
    with pytest.raises(ValueError, match="relative_position_bias"):
        tiny_config("vilt", relative_position_bias=True)


def test_layers_before_the_fusion_layer_keep_text_and_image_apart():
    config = tiny_config("hybrid", fusion_layer=2)  # both tiny layers attend within their modality
    model = build_model(config, vocab_size=30522).eval()
    images, pixel_mask, input_ids, text_mask = inputs()
    text = model.encoder(images, pixel_mask, input_ids, text_mask).text_tokens
    other = model.encoder(255 - images, pixel_mask, input_ids, text_mask).text_tokens
    assert torch.allclose(text, other, atol=1e-6)
    fused = build_model(tiny_config("hybrid"), vocab_size=30522).eval()
    fused.load_state_dict(model.state_dict())
    changed = fused.encoder(255 - images, pixel_mask, input_ids, text_mask).text_tokens
    assert not torch.allclose(fused.encoder(images, pixel_mask, input_ids, text_mask).text_tokens, changed)


def test_a_model_built_under_inference_mode_still_predicts():
    # Parameters created under torch.inference_mode keep no version counter: the heads then
    # skip their kept folded weights and compute directly.
    with torch.inference_mode():
        model = build_model(tiny_config("hybrid"), vocab_size=30522).eval()
        out = model(*inputs())["token"]
    reference = build_model(tiny_config("hybrid"), vocab_size=30522).eval()
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.allclose(reference(*inputs())["token"]["boxes"], out["boxes"], atol=1e-5)


@pytest.mark.parametrize(
    "kind,branches,relation", [("hybrid", 1, None), ("hybrid", 3, None), ("vilt", 1, None), ("hybrid", 1, "token"),
                               ("hybrid", 3, "token"), ("hybrid", 1, "words"), ("vilt", 1, "words"),
                               ("hybrid", 3, "words")]
)  # fmt: skip
def test_folded_token_inference_answers_as_the_token_branch(kind, branches, relation):
    # Inference (eval, no autograd) folds the token branch with visual_proj and detail_proj:
    # the visual tokens are never projected, and the answer is the same.
    config = tiny_config(kind)
    config.head.token_branches, config.head.deploy_branch = branches, (1 if branches > 1 else None)
    config.head.landmark_relation = relation is not None
    config.head.landmark_pointer = relation or "token"
    model = build_model(config, vocab_size=30522).eval()
    heads = model.token_head.one.branches if branches > 1 else [model.token_head]
    with torch.no_grad():
        for param in model.parameters():  # away from the near-zero initial box layer and biases
            param.add_(torch.randn_like(param) * 0.05)
        for head in heads:  # a relation that moves the answer
            if relation:
                head.landmark_relation.coefficients.bias.copy_(torch.tensor([-3.0, 1.0, -1.0, -2.0]))
    for _ in range(2):
        expected = model(*inputs(), use_decoder=False)["token"]  # autograd on: the branch as it is
        assert "cell_boxes" not in expected
        with torch.inference_mode():
            assert model._folded_token_branch(None) is not None
            folded = model(*inputs(), use_decoder=False)["token"]
        for key in ("logits", "boxes", "ref_logits") + (("landmark_logits", "content_logits") if relation else ()):
            assert torch.allclose(folded[key], expected[key], atol=1e-5), key
        assert (branches > 1) == ("branches" in folded)
        with torch.no_grad():  # a weight update is picked up
            heads[-1].box_head.layers[0].weight.mul_(1.5)
            model.visual_proj.bias.add_(0.3)
    # A forward hook on a folded module still fires: the branch then runs as it is.
    projected = []
    model.visual_proj.register_forward_hook(lambda module, args, output: projected.append(args[0].shape[1]))
    with torch.inference_mode():
        assert model._folded_token_branch(None) is None
        hooked = model(*inputs(), use_decoder=False)["token"]
    assert projected == [16] and torch.allclose(hooked["boxes"], model(*inputs(), use_decoder=False)["token"]["boxes"])


@pytest.mark.parametrize("relation", [None, "token", "words"])
def test_every_parameter_of_the_token_branch_changes_an_output(relation):
    # A parameter that cannot change any output is dead weight: a bias added to every cell's
    # attention logit before the softmax over the cells (the key projection's) was one.
    config = tiny_config("hybrid")
    config.head.landmark_relation, config.head.landmark_pointer = relation is not None, relation or "token"
    model = build_model(config, vocab_size=30522).eval()

    def outputs() -> list[torch.Tensor]:
        out = model(*inputs(), use_decoder=False, all_cells=True)["token"]
        # Only what a softmax reads counts for logits: a shift of all of them is no change.
        parts = [out["logits"].log_softmax(-1), out["ref_logits"].log_softmax(-1), out["cell_boxes"]]
        return parts + ([out["landmark_logits"].log_softmax(-1)] if relation else [])

    with torch.no_grad():
        for param in model.token_head.parameters():  # away from the zero-initialised layers
            param.add_(torch.randn_like(param) * 0.05)
        before = outputs()
        for name, parameter in model.token_head.named_parameters():
            saved = parameter.clone()
            parameter.add_(torch.randn_like(parameter) * 0.5)
            change = max(float((a - b).abs().max()) for a, b in zip(outputs(), before))
            parameter.copy_(saved)
            assert change > 1e-4, f"token_head.{name} changes no output"


def test_folded_inference_weights_follow_parameters_replaced_by_a_move():
    model = build_model(tiny_config("hybrid"), vocab_size=30522).eval()
    with torch.inference_mode():
        model(*inputs())  # builds the folded weights
    # A move replaces every parameter's data with fresh tensors (version 0 again), as a trip
    # to a GPU and back does; the new weights must be read, not the kept fold.
    model.to(torch.float64)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.to(torch.float32)
    expected = model(*inputs(), use_decoder=False)["token"]
    with torch.inference_mode():
        folded = model(*inputs(), use_decoder=False)["token"]
    for key in ("logits", "boxes", "ref_logits"):
        assert torch.allclose(folded[key], expected[key], atol=1e-5), key


def test_gathered_cell_detail_is_the_cells_space_to_depth():
    from simvg.models.heads.cell_detail import cell_detail, gather_cell_detail

    torch.manual_seed(0)
    for size in (8, 7):  # twice the grid, and one short of it (zero-padded)
        features = torch.randn(2, 3, size, size)
        cells = torch.tensor([[0, 15, 6], [9, 9, 3]])
        every = cell_detail(features, (4, 4))
        assert torch.equal(gather_cell_detail(features, (4, 4), cells), every[torch.arange(2)[:, None], cells])


def test_vilt_sdpa_attention_matches_eager_with_the_same_weights():
    eager = build_model(tiny_config("vilt"), vocab_size=30522).eval()
    sdpa = build_model(tiny_config("vilt", attention="sdpa"), vocab_size=30522).eval()
    sdpa.load_state_dict(eager.state_dict())  # strict: the same parameter names
    # Padded text and a letterboxed image: the masks reach the fused kernel.
    expected, got = eager.encoder(*inputs()), sdpa.encoder(*inputs())
    assert torch.allclose(got.visual_tokens, expected.visual_tokens, atol=1e-5)
    assert torch.allclose(got.text_tokens, expected.text_tokens, atol=1e-5)
    sdpa.train()
    out = sdpa(*inputs())
    (out["token"]["logits"].sum() + out["decoder"]["boxes"].sum()).backward()
    assert sdpa.encoder.encoder.layer[0].attention.attention.query.weight.grad.abs().sum() > 0


def test_pixel_normalization_is_per_channel_mean_and_std():
    from simvg.models.encoders.base import PIXEL_NORMALIZATIONS, normalize_images

    mean, std = PIXEL_NORMALIZATIONS["imagenet"]
    at_mean = torch.tensor([round(m * 255) for m in mean], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    one_std = torch.tensor([round((m + s) * 255) for m, s in zip(mean, std)], dtype=torch.uint8).view(1, 3, 1, 1)
    assert normalize_images(at_mean, "imagenet").abs().max() < 0.01
    assert normalize_images(one_std, "imagenet").flatten() == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    extremes = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert normalize_images(extremes).flatten().tolist() == [-1.0, 1.0] * 3  # "half", the default


@pytest.mark.parametrize("kind", ["hybrid", "vilt"])
def test_the_encoder_normalises_as_its_config_says(kind):
    half = build_model(tiny_config(kind), vocab_size=30522).eval()
    imagenet = build_model(tiny_config(kind, pixel_normalization="imagenet"), vocab_size=30522).eval()
    imagenet.load_state_dict(half.state_dict())
    assert (half.encoder.pixel_normalization, imagenet.encoder.pixel_normalization) == ("half", "imagenet")
    with torch.no_grad():
        a, b = half.encoder(*inputs()).visual_tokens, imagenet.encoder(*inputs()).visual_tokens
    assert (a - b).abs().max() > 1e-2
    from simvg.config import Config, from_dict, to_dict

    saved = to_dict(Config())
    del saved["model"]["resize"]  # a checkpoint from before the option
    assert from_dict(Config, saved).model.resize == "letterbox"
