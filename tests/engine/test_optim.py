import pytest

from simvg.config import TrainConfig
from simvg.engine.optim import build_optimizer
from simvg.models import build_model
from tests.models.test_model import tiny_config


def test_each_part_of_the_model_trains_at_its_own_learning_rate():
    config = tiny_config("hybrid")
    config.head.landmark_relation, config.head.landmark_pointer = True, "words"
    model = build_model(config, vocab_size=30522)
    train = TrainConfig(lr=1e-3, encoder_lr_mult=0.2, stem_lr_mult=0.5, landmark_pointer_lr_mult=10.0)
    groups = {g["name"]: g for g in build_optimizer(model, train).param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx(
        {"head": 1e-3, "encoder": 2e-4, "fresh": 5e-4, "landmark_pointer": 1e-2}
    )
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["landmark_pointer"] == {id(p) for p in model.token_head.landmark_relation.pointer.parameters()}
    assert {id(p) for p in model.encoder.stem.parameters()} <= ids["fresh"]
    assert {id(p) for p in model.encoder.layers.parameters()} <= ids["encoder"]
    assert id(model.token_head.landmark_relation.coefficients.weight) in ids["head"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(s) for s in ids.values()) == len(trainable)
