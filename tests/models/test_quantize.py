"""Int8 inference: the shipped student gives the same answers with its encoder's linear layers in int8."""

import pytest
import torch
from torchvision.ops import box_iou

from simvg import Grounder
from simvg.cli import main
from simvg.data.readers import load_records
from simvg.models import build_model
from simvg.models.quantize import quantize_for_cpu
from simvg.weights import DEFAULT_MODEL_DIR
from tests.models.test_model import inputs, tiny_config


def test_the_encoders_linear_layers_become_int8_and_the_heads_stay_float_and_folded():
    model = build_model(tiny_config("hybrid"), vocab_size=30522).eval()
    linears = sum(type(m) is torch.nn.Linear for m in model.encoder.modules())
    head_linears = sum(type(m) is torch.nn.Linear for m in model.modules()) - linears
    with torch.inference_mode():
        expected = model(*inputs())["token"]
    quantize_for_cpu(model, "int8")
    assert linears > 5 and sum(type(m) is torch.nn.Linear for m in model.encoder.modules()) == 0
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == head_linears > 10
    with torch.inference_mode():
        assert model._folded_token_branch(None) is not None  # the float head still runs folded
        out = model(*inputs())["token"]
    assert out["boxes"].shape == (2, 4) and torch.isfinite(out["boxes"]).all()
    assert not torch.equal(out["ref_logits"], expected["ref_logits"])  # the encoder did change
    with pytest.raises(ValueError, match="int4"):
        quantize_for_cpu(model, "int4")


def test_the_int8_student_answers_like_the_float_one(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path), "--train", "0", "--val", "30", "--testA", "0", "--testB", "0"]
    assert main([*args, "--seed", "7", "--image-size", "256"]) == 0
    capsys.readouterr()
    records = load_records(tmp_path, "synthref", "val")
    images = [r.image_path for r in records for _ in r.expressions]
    phrases = [e for r in records for e in r.expressions]
    float_model = Grounder.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    int8_model = Grounder.from_pretrained(DEFAULT_MODEL_DIR, quantize="int8")
    assert int8_model.device.type == "cpu" and int8_model.quantization == "int8"
    same = [
        float(box_iou(torch.tensor([a.box]), torch.tensor([b.box]))[0, 0]) >= 0.8
        for a, b in zip(float_model.predict(images, phrases), int8_model.predict(images, phrases))
    ]
    assert len(same) >= 40 and sum(same) >= 0.9 * len(same)
    with pytest.raises(ValueError, match="quantized"):
        int8_model.save_pretrained(tmp_path / "copy")
    eval_args = ["eval", str(DEFAULT_MODEL_DIR), "--data-root", str(tmp_path), "--dataset", "synthref", "--split", "val"]
    assert main([*eval_args, "--int8", "--json"]) == 0
    assert '"acc@0.5"' in capsys.readouterr().out
