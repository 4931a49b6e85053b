"""The Python API: Grounder.from_pretrained / predict / save_pretrained."""

import numpy as np
import pytest
import torch
from PIL import Image

from simvg import Grounder, GroundingResult
from simvg.data.dataset import PhraseError
from simvg.data.images import ImageReadError
from tests.engine.test_checkpoint import save_tiny


@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_tiny(directory)
    return Grounder.from_pretrained(directory, device="cpu")


def test_single_prediction_is_in_original_pixels(grounder):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    result = grounder.predict(image, "the red circle")
    assert isinstance(result, GroundingResult) and result.branch == "token" and result.text == "the red circle"
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 <= x1 <= 500 and 0 <= y0 <= y1 <= 300
    assert 0.0 <= result.score <= 1.0
    assert isinstance(grounder.model, torch.nn.Module) and not grounder.model.training


def test_inputs_of_every_kind_give_the_same_box(grounder, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(pixels).save(path)
    boxes = [grounder.predict(source, "the blue one").box for source in (path, str(path), Image.open(path), pixels)]
    for box in boxes[1:]:
        assert np.allclose(box, boxes[0], atol=1e-4)


def test_lists_in_lists_out_and_batching_does_not_change_results(grounder):
    image = np.random.default_rng(2).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    other = np.random.default_rng(3).integers(0, 255, (50, 120, 3), dtype=np.uint8)
    texts = ["left star", "the big square", "a green triangle"]
    many = grounder.predict(image, texts)
    assert [r.text for r in many] == texts
    one_by_one = [grounder.predict(image, t) for t in texts]
    for a, b in zip(many, one_by_one):
        assert np.allclose(a.box, b.box, atol=1e-3)
    paired = grounder.predict([image, other], ["x", "y"])
    assert len(paired) == 2 and paired[1].box[2] <= 120
    broadcast = grounder.predict([image, other], "x")
    assert np.allclose(broadcast[0].box, paired[0].box, atol=1e-3)
    grounder.batch_size = 2
    assert np.allclose(grounder.predict(image, texts)[2].box, many[2].box, atol=1e-3)
    grounder.batch_size = 16
    with pytest.raises(ValueError, match="2 images and 3 phrases"):
        grounder.predict([image, other], texts)


def test_decoder_branch_and_unknown_branch(grounder):
    image = np.zeros((32, 32, 3), np.uint8)
    assert grounder.predict(image, "x", branch="decoder").branch == "decoder"
    with pytest.raises(ValueError, match="branch 'middle'"):
        grounder.predict(image, "x", branch="middle")


def test_bad_inputs_are_clear(grounder, tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(PhraseError, match="empty"):
        grounder.predict(image, "  ")
    with pytest.raises(PhraseError, match="empty"):
        grounder.predict(image, ["ok", ""])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        grounder.predict(tmp_path / "missing.jpg", "x")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        grounder.predict(tmp_path / "bad.jpg", "x")
    with pytest.warns(UserWarning, match="truncated"):
        grounder.predict(image, " ".join(["very"] * 40) + " small circle")
    with pytest.raises(TypeError, match="got NoneType"):
        grounder.predict(image, None)
    with pytest.raises(TypeError, match="got bytes"):
        grounder.predict(image, [b"the circle"])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Grounder(grounder.model, grounder.tokenizer, grounder.config, grounder.backbone_config, batch_size=0)


def test_extreme_aspect_ratio_pil_image_is_grounded(grounder):
    result = grounder.predict(Image.new("RGB", (10000, 1)), "x")
    assert 0 <= result.box[0] <= result.box[2] <= 10000 and 0 <= result.box[1] <= result.box[3] <= 1


def test_save_pretrained_round_trip(grounder, tmp_path):
    grounder.save_pretrained(tmp_path / "copy")
    again = Grounder.from_pretrained(tmp_path / "copy", device="cpu")
    image = np.random.default_rng(4).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert np.allclose(again.predict(image, "thing").box, grounder.predict(image, "thing").box, atol=1e-5)


def test_half_precision_checkpoint_is_half_the_size_and_loads_as_float32(grounder, tmp_path):
    grounder.save_pretrained(tmp_path / "full")
    grounder.save_pretrained(tmp_path / "half", dtype=torch.float16)
    full, half = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("full", "half"))
    assert half < 0.6 * full
    again = Grounder.from_pretrained(tmp_path / "half", device="cpu")
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    image = np.random.default_rng(5).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert np.allclose(again.predict(image, "thing").box, grounder.predict(image, "thing").box, atol=0.5)


def test_exif_rotated_photo_boxes_are_in_the_displayed_frame(grounder, tmp_path):
    stored = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 8
    stored.save(tmp_path / "rot.jpg", exif=exif)
    x0, y0, x1, y1 = grounder.predict(tmp_path / "rot.jpg", "x").box
    assert x1 <= 20 and y1 <= 60  # displayed as 20 wide, 60 tall
