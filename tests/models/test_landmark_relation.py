import math

import pytest
import torch

from simvg.config import Config, LossConfig, ModelConfig
from simvg.engine.tasks import build_auxiliary_losses
from simvg.models import build_model
from simvg.models.criterion import reference_loss
from simvg.models.heads.landmark_relation import PLAUSIBLE_MARGIN, relate_plausible, relation_bias
from simvg.models.heads.token_branch import TokenBranch
from simvg.models.landmark import landmark_reference_loss
from tests.models.test_model import TINY_HEAD, tiny_config

GRID = (4, 4)


def cell(row: int, col: int) -> int:
    return row * GRID[1] + col


def coefficients(distance=0.0, dx=0.0, dy=0.0, landmark=0.0) -> torch.Tensor:
    return torch.tensor([[distance, dx, dy, landmark]])


def test_the_relation_picks_the_candidate_nearest_to_or_farthest_from_the_landmark():
    landmark = torch.zeros(1, 16)
    landmark[0, cell(0, 0)] = 1.0  # the pointer is sure: the landmark is in the top-left cell
    # The phrase's target words fit three objects (and the landmark, "the big shape nearest
    # to the big square"): equal logits there, none elsewhere.
    candidates = [cell(0, 0), cell(1, 2), cell(3, 3), cell(2, 0)]
    logits = torch.full((1, 16), -20.0)
    logits[0, candidates] = 0.0

    def answer(weights):
        return int((logits + relation_bias(weights, landmark, GRID)).argmax())

    bias = relation_bias(coefficients(distance=1.0), landmark, GRID)
    assert float(bias[0, cell(1, 2)]) == pytest.approx(math.sqrt(1 + 4), abs=1e-3)  # distance in cells
    assert answer(coefficients(distance=-1.0, landmark=-10.0)) == cell(2, 0)  # nearest, not the landmark
    assert answer(coefficients(distance=-1.0)) == cell(0, 0)  # without excluding it: the landmark
    assert answer(coefficients(distance=1.0)) == cell(3, 3)  # farthest
    assert answer(coefficients(dx=-1.0, landmark=-10.0)) == cell(2, 0)  # least right (x offsets 2, 3, 0)
    assert answer(coefficients(dy=-1.0, landmark=-10.0)) == cell(1, 2)  # least below (y offsets 1, 3, 2)
    # The landmark's position is the pointer's attention-weighted centre.
    split = torch.zeros(1, 16)
    split[0, cell(0, 0)] = split[0, cell(0, 2)] = 0.5
    distances = relation_bias(coefficients(distance=1.0), split, GRID)
    assert float(distances[0, cell(0, 1)]) == pytest.approx(0.0, abs=1e-2)
    assert float(distances[0, cell(1, 1)]) == pytest.approx(1.0, abs=1e-3)


def test_a_fresh_relation_leaves_the_answer_alone_and_its_pointer_sees_only_valid_cells():
    torch.manual_seed(0)
    plain, related = TokenBranch(8), TokenBranch(8, landmark_relation=True)
    related.load_state_dict(plain.state_dict(), strict=False)
    token, visual = torch.randn(2, 8), torch.randn(2, 16, 8)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 8:] = False
    expected, out = plain(token, visual, mask, GRID), related(token, visual, mask, GRID)
    assert torch.allclose(out["ref_logits"], expected["ref_logits"]) and torch.allclose(out["boxes"], expected["boxes"])
    assert (out["landmark_logits"][0, 8:] == torch.finfo(torch.float32).min).all()
    assert out["landmark_logits"][0, :8].abs().max() < 1e3 and "landmark_logits" not in expected


def test_landmark_reference_loss_targets_the_landmarks_cell():
    logits = torch.zeros(3, 16, requires_grad=True)
    landmarks = [None, (0.6, 0.1), (0.1, 0.9)]  # cells (0, 2) and (3, 0)
    with torch.no_grad():
        logits[1, cell(0, 2)] = logits[2, cell(3, 0)] = 30.0
    assert landmark_reference_loss(logits, GRID, landmarks).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        logits[2, cell(3, 0)] = 0.0
    assert landmark_reference_loss(logits, GRID, landmarks).item() == pytest.approx(math.log(16) / 2, rel=1e-4)
    with torch.no_grad():  # letterboxed images: masked cells hold float32's lowest value
        logits[:, 13:] = torch.finfo(torch.float32).min
    assert landmark_reference_loss(logits, GRID, landmarks).isfinite()
    empty = landmark_reference_loss(logits, GRID, [None, None, None])
    assert empty.item() == 0.0
    empty.backward()


def test_landmark_ref_needs_the_relation_and_landmarks(synthref_root):
    from simvg.data.readers import load_records
    from simvg.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    records = load_records(synthref_root, "synthref", "train")
    config = Config(model=ModelConfig(image_size=64, encoder=tiny_config("hybrid").encoder, head=TINY_HEAD),
                    loss=LossConfig(landmark_ref=2.0))  # fmt: skip
    model = build_model(config.model, len(tokenizer))
    with pytest.raises(ValueError, match="model.head.landmark_relation"):
        build_auxiliary_losses(model, config, tokenizer, records)
    config.model = tiny_config("hybrid")
    config.model.head.landmark_relation = True
    model = build_model(config.model, len(tokenizer))
    auxiliary = build_auxiliary_losses(model, config, tokenizer, records)
    assert auxiliary.landmark_ref and auxiliary.weight_dict["loss_landmark_ref"] == 2.0
    for record in records:
        record.extra.pop("programs")
    with pytest.raises(ValueError, match="loss.landmark_ref needs phrases whose annotations name a landmark"):
        build_auxiliary_losses(model, config, tokenizer, records)


def test_the_relation_only_chooses_among_the_cells_the_phrase_itself_finds_plausible():
    landmark = torch.zeros(1, 16)
    landmark[0, cell(0, 0)] = 1.0
    # "the circle nearest to the square": two circles the phrase's own attention finds alike;
    # a triangle right next to the landmark it rules out; padding at float32's lowest.
    content = torch.full((1, 16), -20.0)
    content[0, [cell(1, 2), cell(3, 3)]] = 0.0
    content[0, cell(0, 1)] = -PLAUSIBLE_MARGIN - 0.5
    content[0, cell(3, 2)] = torch.finfo(torch.float32).min
    nearest = relation_bias(coefficients(distance=-5.0), landmark, GRID)
    assert int((content + nearest).argmax()) == cell(0, 1)  # added everywhere: the triangle
    final = relate_plausible(content, nearest)
    assert int(final.argmax()) == cell(1, 2)  # the nearer circle
    assert (final[0, [cell(1, 2), cell(3, 3)]] == (content + nearest)[0, [cell(1, 2), cell(3, 3)]]).all()
    left_out = torch.ones(16, dtype=torch.bool)
    left_out[[cell(1, 2), cell(3, 3)]] = False
    assert (final[0, left_out] == torch.finfo(torch.float32).min).all()
    # Among the plausible cells the term decides, even against the phrase's own preference ...
    content[0, cell(1, 2)] = 1.0
    assert int(relate_plausible(content, relation_bias(coefficients(distance=50.0), landmark, GRID)).argmax()) == cell(3, 3)
    # ... and the best cell of the phrase's own attention always stays in, however the term scores it.
    alone = torch.full((1, 16), -20.0)
    alone[0, cell(2, 2)] = 0.0
    assert int(relate_plausible(alone, nearest).argmax()) == cell(2, 2)


def test_with_a_relation_the_reference_loss_trains_the_phrases_own_attention_too():
    grid, targets = GRID, torch.tensor([[0.6, 0.1, 0.1, 0.1], [0.1, 0.9, 0.1, 0.1]])  # cells (0, 2), (3, 0)
    content = torch.zeros(2, 16, requires_grad=True)
    final = torch.full((2, 16), torch.finfo(torch.float32).min)
    final[0, [cell(0, 2), cell(1, 1)]] = torch.tensor([2.0, 0.0])  # sample 0: its target is reachable
    final[1, cell(1, 1)] = 0.0  # sample 1: not
    loss = reference_loss(final, grid, targets, content)
    reachable = -torch.log(torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + 1))
    assert loss.item() == pytest.approx(math.log(16) + reachable.item() / 2, rel=1e-5)
    loss.backward()
    assert content.grad.abs().sum() > 0  # the phrase's own attention gets its own loss
    # A ONE ensemble's left-out cells hold a gated share of float32's lowest: still left out.
    final[1] = torch.finfo(torch.float32).min * 0.3
    final[1, cell(1, 1)] = 0.0
    assert reference_loss(final, grid, targets, content).isfinite()
    # Without a relation: the plain cross-entropy.
    assert reference_loss(content, grid, targets).item() == pytest.approx(math.log(16), rel=1e-5)


def words_model():
    config = tiny_config("hybrid")
    config.head.landmark_relation, config.head.landmark_pointer = True, "words"
    return build_model(config, vocab_size=30522)


def test_the_words_pointer_learns_without_training_the_encoder():
    from tests.models.test_model import inputs

    model = words_model().train()
    out = model(*inputs(), use_decoder=False)
    out["token"]["landmark_logits"][:, :8].logsumexp(dim=-1).sum().backward()
    pointer = model.token_head.landmark_relation.pointer
    assert all(p.grad is not None for p in pointer.parameters())  # every one of its parameters is trained
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.visual_proj.weight.grad is None  # nor the projection before the branch


def test_every_parameter_of_the_words_pointer_changes_where_it_points():
    # A parameter that cannot change the pointer's distribution over the cells is dead weight
    # (a bias added to every word's score before the softmax over the words was one).
    from tests.models.test_model import inputs

    model = words_model().eval()
    with torch.no_grad():
        before = model(*inputs(), use_decoder=False)["token"]["landmark_logits"].log_softmax(-1)
        pointer = model.token_head.landmark_relation.pointer
        for name, parameter in pointer.named_parameters():
            saved = parameter.clone()
            parameter.add_(torch.randn_like(parameter) * 0.5)
            after = model(*inputs(), use_decoder=False)["token"]["landmark_logits"].log_softmax(-1)
            parameter.copy_(saved)
            # Only where the model points counts: a shift of every cell's logit is no change.
            assert (after - before).abs().max() > 1e-5, f"{name} does not change where the pointer points"


def test_a_phrase_points_the_same_alone_and_in_a_padded_batch():
    from tests.models.test_model import inputs

    model = words_model().eval()
    images, pixel_mask, input_ids, text_mask = inputs()  # row 1's last two tokens are padding
    with torch.no_grad():
        batch = model(images, pixel_mask, input_ids, text_mask, use_decoder=False)["token"]["landmark_logits"]
        alone = model(images[1:], pixel_mask[1:], input_ids[1:, :3], text_mask[1:, :3], use_decoder=False)
    # Padding changes the encoder's fused tokens a little (float rounding), never what the pointer reads.
    assert torch.allclose(alone["token"]["landmark_logits"], batch[1:], atol=1e-4)


def test_the_words_pointer_learns_which_words_name_the_landmark():
    # "<a> of <b>": the landmark is <b>, the object named after the relation word; without the
    # words' order a reader cannot tell it from <a>.
    from simvg.models.heads.landmark_relation import WordsLandmarkPointer

    torch.manual_seed(0)
    names, dim = torch.randn(6, 16), 16  # six object names; word 6 is the relation word
    embeddings = torch.cat([names, torch.randn(1, 16)])
    objects = torch.randn(6, dim)  # what each object's visual token holds
    pointer = WordsLandmarkPointer(16, dim, hidden=32)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=1e-2)

    def sample(n):
        pairs = torch.stack([torch.randperm(6)[:2] for _ in range(n)])  # target, landmark
        words = embeddings[torch.stack([pairs[:, 0], torch.full((n,), 6), pairs[:, 1]], dim=1)]
        cells = torch.stack([torch.randperm(16)[:6] for _ in range(n)])  # where each object lies
        visual = torch.zeros(n, 16, dim)
        visual.scatter_(1, cells[..., None].expand(-1, -1, dim), objects.expand(n, -1, -1))
        return (words, torch.ones(n, 3, dtype=torch.bool)), visual, cells.gather(1, pairs[:, 1:])[:, 0]

    for _ in range(150):
        words, visual, landmark = sample(64)
        loss = torch.nn.functional.cross_entropy(pointer(words, visual, 0.25), landmark)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    words, visual, landmark = sample(200)
    assert (pointer(words, visual, 0.25).argmax(dim=-1) == landmark).float().mean() > 0.95


def test_an_unknown_landmark_pointer_is_a_config_error():
    from simvg.config import ConfigError, HeadConfig

    with pytest.raises(ConfigError, match="model.head.landmark_pointer"):
        HeadConfig(landmark_pointer="text")
