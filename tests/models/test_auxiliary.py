import math

import pytest
import torch

from simvg.config import Config, LossConfig, ModelConfig
from simvg.engine.tasks import build_auxiliary_losses
from simvg.models import build_model
from simvg.models.auxiliary import AuxiliaryLosses
from simvg.models.category import CategoryLoss
from simvg.models.word_alignment import WordAlignmentLoss
from tests.models.test_model import TINY_HEAD, tiny_config

CLS, SEP, PAD = 101, 102, 0


def test_loss_is_the_mean_cross_entropy_of_the_phrase_words_without_special_tokens():
    torch.manual_seed(0)
    vocab, width = 200, 8
    words = torch.randn(vocab, width, requires_grad=True)
    loss_fn = WordAlignmentLoss(width, special_ids=[CLS, SEP, PAD])
    content = torch.randn(2, 4, width)
    cells = torch.tensor([3, 1])
    input_ids = torch.tensor([[CLS, 150, 160, SEP, PAD], [CLS, 170, SEP, PAD, PAD]])
    text_mask = input_ids != PAD
    loss = loss_fn(content, cells, input_ids, text_mask, words)
    log_probs = torch.log_softmax(loss_fn.proj(content[[0, 1], cells]) @ words.T, dim=-1)
    expected = (-(log_probs[0, 150] + log_probs[0, 160]) / 2 - log_probs[1, 170]) / 2
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert words.grad is None  # the words stay put; the visual side moves towards them


def test_a_token_that_looks_like_its_words_scores_better_than_one_that_does_not():
    width = 16
    words = torch.eye(width)  # 16 orthogonal "words"
    loss_fn = WordAlignmentLoss(width, special_ids=[0])
    with torch.no_grad():
        loss_fn.proj.weight.copy_(torch.eye(width) * 10)
        loss_fn.proj.bias.zero_()
    input_ids, text_mask = torch.tensor([[3]]), torch.tensor([[True]])
    cells = torch.tensor([0])
    aligned = loss_fn(words[3][None, None], cells, input_ids, text_mask, words)
    other = loss_fn(words[5][None, None], cells, input_ids, text_mask, words)
    assert float(aligned.detach()) < 0.01 < math.log(width) < float(other.detach())


def test_category_loss_ignores_records_without_a_known_category():
    torch.manual_seed(0)
    loss_fn = CategoryLoss(8, ["large red circle", "small blue star"])
    content, cells = torch.randn(3, 4, 8), torch.tensor([0, 2, 3])
    logits = loss_fn.classifier(content[[0, 1, 2], cells])
    both = loss_fn(content, cells, ["small blue star", None, "large red circle"])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]))
    assert float(both.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # A category never seen in training counts as unknown; a batch of unknowns gives 0.
    assert float(loss_fn(content, cells, ["tiny green cube", None, None]).detach()) == 0.0


def test_scene_category_loss_classifies_every_listed_object_at_its_centre_cell():
    from simvg.data.dataset import Batch

    torch.manual_seed(0)
    category = CategoryLoss(8, ["large red circle", "small blue star"])
    auxiliary = AuxiliaryLosses(None, category, {"loss_category": 0.0, "loss_scene_category": 1.0},
                                scene_category=True)  # fmt: skip
    content = torch.randn(2, 4, 8, requires_grad=True)  # a 2x2 grid
    meta = [{"objects": [(0.9, 0.1, "small blue star"), (0.2, 0.8, "large red circle")]},
            {"objects": [(0.7, 0.7, "small blue star"), (0.5, 0.5, "tiny green cube")]}, ]  # fmt: skip
    batch = Batch(images=None, pixel_mask=None, input_ids=None, text_mask=None, targets=torch.full((2, 4), 0.5),
                  letterboxes=None, phrases=None, meta=meta)  # fmt: skip
    losses = auxiliary(None, {"visual_content": content, "grid": (2, 2)}, batch)
    assert set(losses) == {"loss_scene_category"}
    # cells: (0.9, 0.1) -> 1, (0.2, 0.8) -> 2, (0.7, 0.7) -> 3; the unknown category is ignored
    logits = category.classifier(content[[0, 0, 1], [1, 2, 3]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1]))
    assert losses["loss_scene_category"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["loss_scene_category"].backward()
    assert content.grad[0, 0].abs().sum() == 0 and content.grad[0, 1].abs().sum() > 0
    no_objects = Batch(images=None, pixel_mask=None, input_ids=None, text_mask=None, targets=torch.full((2, 4), 0.5),
                       letterboxes=None, phrases=None, meta=[{}, {"objects": []}])  # fmt: skip
    assert auxiliary(None, {"visual_content": content, "grid": (2, 2)}, no_objects)["loss_scene_category"].item() == 0.0


def test_auxiliary_losses_are_built_as_configured_with_clear_errors(synthref_root):
    from simvg.data.readers import load_records
    from simvg.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    records = load_records(synthref_root, "synthref", "train")
    assert all(isinstance(r.category, str) for r in records)  # SynthRef names "size colour shape"
    config = Config(model=tiny_config("vilt"), loss=LossConfig(word_alignment=1.0))
    with pytest.raises(ValueError, match="loss.word_alignment"):
        build_auxiliary_losses(build_model(config.model, len(tokenizer)), config, tokenizer, records)
    config.model = ModelConfig(image_size=64, encoder=tiny_config("hybrid").encoder, head=TINY_HEAD)
    hybrid = build_model(config.model, len(tokenizer))
    auxiliary = build_auxiliary_losses(hybrid, config, tokenizer, records)
    assert isinstance(auxiliary.word_alignment, WordAlignmentLoss) and auxiliary.category is None
    config.loss = LossConfig(category=2.0)
    auxiliary = build_auxiliary_losses(hybrid, config, tokenizer, records)
    assert auxiliary.word_alignment is None and auxiliary.weight_dict["loss_category"] == 2.0
    assert set(auxiliary.category.index) == {r.category for r in records}
    for record in records:
        record.extra.pop("category", None)
    with pytest.raises(ValueError, match="loss.category"):
        build_auxiliary_losses(hybrid, config, tokenizer, records)
    # Scene supervision needs only the objects list; it shares the category classifier.
    config.loss = LossConfig(scene_category=3.0)
    auxiliary = build_auxiliary_losses(hybrid, config, tokenizer, records)
    assert auxiliary.scene_category and auxiliary.weight_dict["loss_scene_category"] == 3.0
    assert set(auxiliary.category.index) == {c for r in records for _, c in r.scene_objects()}
    for record in records:
        record.extra.pop("objects")
    with pytest.raises(ValueError, match="loss.scene_category"):
        build_auxiliary_losses(hybrid, config, tokenizer, records)
    config.loss = LossConfig()
    assert build_auxiliary_losses(hybrid, config, tokenizer, records) is None


def test_landmark_offset_loss_targets_each_valid_cells_offset_to_the_landmark():
    from simvg.models.heads.grid import grid_centres
    from simvg.models.landmark import LandmarkOffsetLoss

    loss_fn = LandmarkOffsetLoss(4)
    with torch.no_grad():  # every token predicts the offset (0.25, 0)
        loss_fn.offset.weight.zero_()
        loss_fn.offset.bias.copy_(torch.tensor([0.25, 0.0]))
    visual = torch.randn(3, 4, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 1:] = False
    landmarks = [None, (0.75, 0.25), (0.25, 0.75)]
    loss = loss_fn(visual, mask, (2, 2), landmarks)
    centres = grid_centres((2, 2))  # (0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)
    errors = []
    for row, landmark in ((1, landmarks[1]), (2, landmarks[2])):
        for cell in range(4):
            if mask[row, cell]:
                target = torch.tensor(landmark) - centres[cell]
                errors.append(torch.nn.functional.smooth_l1_loss(torch.tensor([0.25, 0.0]), target, beta=0.05,
                                                                 reduction="sum"))  # fmt: skip
    assert loss.item() == pytest.approx(torch.stack(errors).mean().item(), rel=1e-5)
    # A token that predicts its true offset costs nothing; a batch without landmarks gives 0.
    assert loss_fn(visual[1:2, :1], mask[1:2, :1], (1, 1), [(0.75, 0.5)]).item() == pytest.approx(0.0, abs=1e-6)
    empty = loss_fn(visual, mask, (2, 2), [None, None, None])
    assert empty.item() == 0.0
    empty.backward()


def test_synthref_records_name_their_relational_phrases_landmark(synthref_root):
    from simvg.data.readers import load_records
    from simvg.models.pretrained import load_tokenizer

    records = load_records(synthref_root, "synthref", "train")
    found = 0
    for record in records:
        for index, program in enumerate(record.extra["programs"]):
            box = record.landmark_box(index)
            assert (box is not None) == (program["op"] == "relate")
            if box is not None:
                found += 1
                assert box != record.box_xyxy
    assert found > 0
    tokenizer = load_tokenizer("minilm-l6")
    config = Config(model=ModelConfig(image_size=64, encoder=tiny_config("hybrid").encoder, head=TINY_HEAD),
                    loss=LossConfig(landmark_offset=3.0))  # fmt: skip
    model = build_model(config.model, len(tokenizer))
    auxiliary = build_auxiliary_losses(model, config, tokenizer, records)
    assert auxiliary.landmark is not None and auxiliary.weight_dict["loss_landmark_offset"] == 3.0
    for record in records:
        record.extra.pop("programs")
    with pytest.raises(ValueError, match="loss.landmark_offset"):
        build_auxiliary_losses(model, config, tokenizer, records)
