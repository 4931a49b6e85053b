import pytest
import torch

from simvg.data.dataset import Collator, GroundingDataset, Preprocessor, StepSampler
from simvg.data.readers import load_records
from simvg.models.pretrained import load_tokenizer


def test_step_sampler_resumes_exactly():
    full = list(StepSampler(10, batch_size=3, num_steps=9, seed=4))
    resumed = list(StepSampler(10, batch_size=3, num_steps=9, seed=4, start_step=5))
    assert resumed == full[5:]
    keys = [k for batch in full for k in batch]
    # Each epoch is a permutation of the 10 items; keys encode the epoch.
    assert sorted(k % 10 for k in keys[:10]) == list(range(10))
    assert all(k // 10 == 1 for k in keys[10:20])


def test_step_sampler_ranks_are_disjoint():
    per_rank = [list(StepSampler(8, batch_size=2, num_steps=2, seed=0, rank=r, world_size=2)) for r in range(2)]
    items = [k for rank in per_rank for batch in rank for k in batch]
    assert sorted(items) == list(range(8))


def test_eval_dataset_counts_every_expression_once_and_train_draws_one(simvg_root):
    tokenizer = load_tokenizer("minilm-l6")
    records = load_records(simvg_root, "mydata", "train")
    pre = Preprocessor(tokenizer, 64, 20)
    evaluation = GroundingDataset(records, pre, train=False)
    assert [(s.meta["record_index"], s.meta["expression_index"]) for s in evaluation] == [(0, 0), (0, 1), (1, 0)]
    training = GroundingDataset(records, pre, train=True, seed=1)
    assert len(training) == 2
    drawn = {training[epoch * 2].phrase for epoch in range(20)}
    assert drawn == {"the red box", "red thing"}
    batch = Collator(tokenizer.pad_token_id)([training[0], training[1]])
    assert batch.images.shape == (2, 3, 64, 64) and batch.targets.shape == (2, 4)
    assert batch.text_mask.sum(1).tolist() == [len(training[0].input_ids), len(training[1].input_ids)]
    assert (batch.input_ids[~batch.text_mask] == tokenizer.pad_token_id).all()
    assert torch.all((batch.targets > 0) & (batch.targets <= 1))


def test_landmarks_are_carried_only_when_asked_for(synthref_root):
    records = load_records(synthref_root, "synthref", "train")
    pre = Preprocessor(load_tokenizer("minilm-l6"), 64, 24)
    index = next(i for i, r in enumerate(records) if r.landmark_box(0) is not None)
    with_landmarks = GroundingDataset(records, pre, train=False, landmarks=True)
    key = next(k for k, item in enumerate(with_landmarks.items) if item == (index, 0))
    centre = with_landmarks[key].meta["landmark"]
    x0, y0, x1, y1 = records[index].landmark_box(0)
    scale = 64 / max(records[index].width, records[index].height)
    assert abs(centre[0] - (x0 + x1) / 2 * scale / 64) < 1e-6 and abs(centre[1] - (y0 + y1) / 2 * scale / 64) < 1e-6
    assert "landmark" not in GroundingDataset(records, pre, train=False)[key].meta


def test_scene_objects_are_carried_only_when_asked_for(synthref_root):
    records = load_records(synthref_root, "synthref", "train")
    pre = Preprocessor(load_tokenizer("minilm-l6"), 64, 24)
    sample = GroundingDataset(records, pre, train=True, scene_objects=True)[0]
    record = records[sample.meta["record_index"]]
    scale = 64 / max(record.width, record.height)
    expected = [((x0 + x1) / 2 * scale / 64, (y0 + y1) / 2 * scale / 64, c) for (x0, y0, x1, y1), c in record.scene_objects()]
    assert [c for _, _, c in sample.meta["objects"]] == [c for _, _, c in expected]
    assert [v for *xy, _ in sample.meta["objects"] for v in xy] == pytest.approx([v for *xy, _ in expected for v in xy])
    assert "objects" not in GroundingDataset(records, pre, train=True)[0].meta
