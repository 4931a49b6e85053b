import statistics

import pytest
import torch

from simvg.config import Config, DataConfig, TrainConfig
from simvg.data.dataset import GroundingDataset, Preprocessor
from simvg.data.readers import load_records
from simvg.engine.stem_pretrain import pretrain_stem
from simvg.models import build_model
from simvg.models.pretrained import load_tokenizer
from tests.models.test_model import tiny_config


def setup(synthref_root, kind="hybrid", steps=40, scene_objects=True):
    tokenizer = load_tokenizer("minilm-l6")
    records = load_records(synthref_root, "synthref", "train")
    config = Config(model=tiny_config(kind), data=DataConfig(dataset="synthref", num_workers=0),
                    train=TrainConfig(batch_size=8, stem_pretrain_steps=steps, stem_pretrain_lr=3e-3, amp="none"))  # fmt: skip
    dataset = GroundingDataset(records, Preprocessor(tokenizer, 64, 16), train=True, scene_objects=scene_objects)
    torch.manual_seed(0)
    return build_model(config.model, len(tokenizer)), dataset, config, tokenizer.pad_token_id


def test_the_stem_alone_learns_to_classify_every_object_deterministically(synthref_root):
    model, dataset, config, pad = setup(synthref_root)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random_state = torch.get_rng_state()
    result = pretrain_stem(model, dataset, config, torch.device("cpu"), pad, log=False)
    assert torch.equal(torch.get_rng_state(), random_state)  # the run's own draws are unchanged
    assert len(result.losses) == 40
    assert statistics.mean(result.losses[-5:]) < 0.8 * result.losses[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("encoder.stem.") for k in changed)
    again, dataset, config, pad = setup(synthref_root)
    pretrain_stem(again, dataset, config, torch.device("cpu"), pad, log=False)
    for name, value in again.encoder.stem.state_dict().items():
        assert torch.equal(value, model.encoder.stem.state_dict()[name]), name


def test_stem_pretraining_names_what_it_needs(synthref_root):
    model, dataset, config, pad = setup(synthref_root, kind="vilt")
    with pytest.raises(ValueError, match="train.stem_pretrain_steps.*vilt"):
        pretrain_stem(model, dataset, config, torch.device("cpu"), pad, log=False)
    model, dataset, config, pad = setup(synthref_root, scene_objects=False)
    with pytest.raises(ValueError, match="scene_objects"):
        pretrain_stem(model, dataset, config, torch.device("cpu"), pad, log=False)
    model, dataset, config, pad = setup(synthref_root)
    for record in dataset.records:
        record.extra.pop("objects")
    with pytest.raises(ValueError, match="list their image's objects"):
        pretrain_stem(model, dataset, config, torch.device("cpu"), pad, log=False)
