import numpy as np
import pytest
import torch

from simvg.config import AugmentConfig
from simvg.data.dataset import PhraseError, Preprocessor
from simvg.data.images import LoadedImage
from simvg.data.transforms import letterbox_to_original, swap_left_right
from simvg.models.pretrained import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


def scene(width: int, height: int, box: tuple[int, int, int, int]) -> LoadedImage:
    pixels = np.full((height, width, 3), 90, np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (250, 10, 10)
    return LoadedImage(pixels, width, height)


@pytest.mark.parametrize(("width", "height"), [(640, 480), (333, 1000), (97, 61), (64, 64), (1999, 37)])
def test_boxes_exact_through_letterbox_and_back(tokenizer, width, height):
    pre = Preprocessor(tokenizer, image_size=160, max_text_length=20)
    rng = np.random.default_rng(width)
    x0, y0 = rng.uniform(0, width * 0.5), rng.uniform(0, height * 0.5)
    box = (x0, y0, x0 + rng.uniform(1, width * 0.5), y0 + rng.uniform(1, height * 0.5))
    sample = pre(LoadedImage(np.zeros((height, width, 3), np.uint8), width, height), "thing", box)
    assert sample.image.shape == (3, 160, 160) and sample.image.dtype == torch.uint8
    back = letterbox_to_original(sample.target[None], 160, [sample.letterbox])[0]
    assert torch.allclose(back, torch.tensor(box, dtype=back.dtype), atol=0.5)
    # The pixel mask covers exactly the resized image at the top-left.
    valid_w, valid_h = round(width * 160 / max(width, height)), round(height * 160 / max(width, height))
    assert sample.pixel_mask.sum() == max(1, valid_w) * max(1, valid_h)
    assert sample.pixel_mask[0, 0]


def test_pre_downscaled_pixels_map_to_original_frame(tokenizer):
    # A 4000x2000 photo decoded at 1000x500 (as load_image does for huge files).
    image = LoadedImage(np.zeros((500, 1000, 3), np.uint8), 4000, 2000)
    pre = Preprocessor(tokenizer, image_size=128, max_text_length=20)
    box = (1000.0, 500.0, 3000.0, 1500.0)
    sample = pre(image, "x", box)
    back = letterbox_to_original(sample.target[None], 128, [sample.letterbox])[0]
    assert torch.allclose(back, torch.tensor(box, dtype=back.dtype), atol=0.5)


def test_swap_left_right_on_word_boundaries():
    assert swap_left_right("the bright cup on the left") == "the bright cup on the right"
    assert swap_left_right("Left of the rightmost star, right?") == "Right of the leftmost star, left?"
    assert swap_left_right("leftover copyright brightly") == "leftover copyright brightly"
    assert swap_left_right("LEFT-most") == "RIGHT-most"


def red_fraction(sample, box_xyxy) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    crop = sample.image[:, y0:y1, x0:x1].float()
    red = (crop[0] > 150) & (crop[1] < 90) & (crop[2] < 90)
    return float(red.float().mean())


def test_flip_moves_the_box_and_swaps_words(tokenizer):
    augment = AugmentConfig(scale=[1.0, 1.0], flip=1.0, color=0.0)
    pre = Preprocessor(tokenizer, image_size=100, max_text_length=20, augment=augment)
    sample = pre(scene(100, 100, (10, 40, 30, 60)), "the bright square on the left", (10, 40, 30, 60), seed=3)
    assert sample.phrase == "the bright square on the right"
    cx, cy, w, h = (sample.target * 100).tolist()
    assert cx == pytest.approx(80, abs=0.6) and cy == pytest.approx(50, abs=0.6)
    assert w == pytest.approx(20, abs=0.6) and h == pytest.approx(20, abs=0.6)
    # The phrase's tokens are the swapped ones.
    assert tokenizer.decode(sample.input_ids, skip_special_tokens=True) == "the bright square on the right"


@pytest.mark.parametrize("crop", [False, True])
def test_augmented_box_follows_the_object(tokenizer, crop):
    augment = AugmentConfig(scale=[0.5, 1.4], crop=crop, flip=0.5, color=1.0)
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20, augment=augment)
    image = scene(200, 150, (120, 30, 170, 90))
    for seed in range(12):
        sample = pre(image, "the red box", (120, 30, 170, 90), seed=seed)
        cx, cy, w, h = (sample.target * 96).tolist()
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        assert red_fraction(sample, (box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1)) > 0.9
        # Valid pixels are exactly where the mask says (padding is black).
        assert (sample.image[:, ~sample.pixel_mask] == 0).all()
        if not crop:  # the whole image stays visible
            assert sample.pixel_mask.sum() >= 0.45 * 96 * 72 * 0.45


def test_same_seed_same_sample(tokenizer):
    pre = Preprocessor(tokenizer, 64, 20, AugmentConfig())
    image = scene(80, 60, (10, 10, 30, 30))
    a = pre(image, "left one", (10, 10, 30, 30), seed=5)
    b = pre(image, "left one", (10, 10, 30, 30), seed=5)
    assert torch.equal(a.image, b.image) and torch.equal(a.target, b.target) and a.phrase == b.phrase


def test_empty_phrase_and_truncation(tokenizer):
    pre = Preprocessor(tokenizer, 64, max_text_length=8)
    image = scene(32, 32, (0, 0, 5, 5))
    for phrase in ["", "   ", "\n"]:
        with pytest.raises(PhraseError, match="empty"):
            pre(image, phrase)
    with pytest.warns(UserWarning, match="truncated to 8 tokens"):
        sample = pre(image, "the very small red circle to the left of the big blue square", warn_truncation=True)
    assert len(sample.input_ids) == 8
    assert sample.input_ids[0] == tokenizer.cls_token_id and sample.input_ids[-1] == tokenizer.sep_token_id


def test_the_landmark_goes_through_the_same_geometry_as_the_target(tokenizer):
    image = scene(200, 100, (10, 40, 30, 60))
    plain = Preprocessor(tokenizer, image_size=100, max_text_length=20)
    sample = plain(image, "the square left of the star", (10, 40, 30, 60), landmark_xyxy=(100, 20, 140, 60))
    assert sample.meta["landmark"] == pytest.approx((0.6, 0.2))  # centre (120, 40) px, halved, / 100
    assert "landmark" not in plain(image, "the square", (10, 40, 30, 60)).meta
    flip = AugmentConfig(scale=[1.0, 1.0], flip=1.0, color=0.0)
    flipped = Preprocessor(tokenizer, image_size=100, max_text_length=20, augment=flip)
    sample = flipped(image, "the square left of the star", (10, 40, 30, 60), seed=3, landmark_xyxy=(100, 20, 140, 60))
    # Mirrored with the image: the landmark now lies as far left of the target as it lay right.
    assert sample.target[0].item() == pytest.approx(0.9, abs=0.01)
    assert sample.meta["landmark"][0] == pytest.approx(sample.target[0].item() - 0.5, abs=0.01)
    # (the image may be placed lower in the square input: both move alike)
    assert sample.meta["landmark"][1] - sample.target[1].item() == pytest.approx(0.2 - 0.25, abs=0.01)


def test_scene_objects_go_through_the_same_geometry_as_the_target(tokenizer):
    image = scene(200, 100, (10, 40, 30, 60))
    objects = [((10, 40, 30, 60), "target"), ((100, 20, 140, 60), "other")]
    plain = Preprocessor(tokenizer, image_size=100, max_text_length=20)
    sample = plain(image, "the square", (10, 40, 30, 60), scene_objects=objects)
    assert [c for _, _, c in sample.meta["objects"]] == ["target", "other"]
    assert [v for *xy, _ in sample.meta["objects"] for v in xy] == pytest.approx([0.1, 0.25, 0.6, 0.2])
    flip = AugmentConfig(scale=[1.0, 1.0], flip=1.0, color=0.0)
    flipped = Preprocessor(tokenizer, image_size=100, max_text_length=20, augment=flip)
    sample = flipped(image, "the square", (10, 40, 30, 60), seed=3, scene_objects=objects)
    (tx, ty, target), (ox, oy, other) = sample.meta["objects"]
    assert (target, other) == ("target", "other")
    assert (tx, ty) == pytest.approx(tuple(sample.target[:2].tolist()), abs=1e-4)
    assert ox == pytest.approx(tx - 0.5, abs=0.01) and oy - ty == pytest.approx(0.2 - 0.25, abs=0.01)


def test_a_crop_drops_the_scene_objects_it_cuts_away_and_moves_the_rest_with_the_target(tokenizer):
    image = scene(200, 100, (10, 40, 30, 60))
    # Original pixels: target (10, 40, 30, 60), "far" (100, 20, 140, 60), "near" (35, 45, 45, 55).
    objects = [((10, 40, 30, 60), "target"), ((100, 20, 140, 60), "far"), ((35, 45, 45, 55), "near")]
    zoom = AugmentConfig(scale=[2.5, 2.5], crop=True, flip=0.0, color=0.0)
    pre = Preprocessor(tokenizer, image_size=100, max_text_length=20, augment=zoom)
    seen = {"far": set(), "near": set()}
    for seed in range(8):
        sample = pre(image, "the square", (10, 40, 30, 60), seed=seed, scene_objects=objects)
        tx, ty, tw = sample.target[:3].tolist()
        per_pixel = tw / 20  # normalised units per original pixel, from the target's own size
        rows = sample.pixel_mask.any(1).nonzero()[:, 0].tolist()
        cols = sample.pixel_mask.any(0).nonzero()[:, 0].tolist()
        left, right, top, bottom = cols[0] / 100, (cols[-1] + 1) / 100, rows[0] / 100, (rows[-1] + 1) / 100
        found = {category: (x, y) for x, y, category in sample.meta["objects"]}
        assert found["target"] == pytest.approx((tx, ty), abs=1e-4)
        for name, (x0, y0, x1, y1) in {"far": (100, 20, 140, 60), "near": (35, 45, 45, 55)}.items():
            # Where the object lands, in the augmented image's normalised units.
            x0, x1 = (tx + per_pixel * (v - 20) for v in (x0, x1))
            y0, y1 = (ty + per_pixel * (v - 50) for v in (y0, y1))
            visible = bool(left <= (x0 + x1) / 2 < right and top <= (y0 + y1) / 2 < bottom)
            seen[name].add(visible)
            assert (name in found) == visible, (seed, name)
            if visible:  # the part outside the crop is cut off
                x0, y0, x1, y1 = max(x0, left), max(y0, top), min(x1, right), min(y1, bottom)
                assert found[name] == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2), abs=0.01)
    assert seen["far"] == {True, False}  # some crops cut it away, others keep it


# --- SimVG's pre-processing: stretch resize and large-scale jitter ---


@pytest.mark.parametrize(("width", "height"), [(640, 480), (333, 1000), (97, 61), (1999, 37)])
def test_stretch_fills_the_square_and_boxes_map_back_exactly(tokenizer, width, height):
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20, resize="stretch")
    box = (width * 0.2, height * 0.3, width * 0.6, height * 0.9)
    sample = pre(LoadedImage(np.zeros((height, width, 3), np.uint8), width, height), "thing", box)
    assert sample.image.shape == (3, 96, 96) and bool(sample.pixel_mask.all())
    assert (sample.letterbox.scale_x, sample.letterbox.scale_y) == pytest.approx((96 / width, 96 / height))
    # The box covers the same share of the input as of the image, on each axis.
    cx, cy, w, h = sample.target.tolist()
    assert (cx, cy, w, h) == pytest.approx((0.4, 0.6, 0.4, 0.6), abs=1e-5)
    back = letterbox_to_original(sample.target[None], 96, [sample.letterbox])[0]
    assert torch.allclose(back, torch.tensor(box, dtype=back.dtype), atol=0.01 * max(width, height))


def test_large_scale_jitter_keeps_most_of_the_target(tokenizer):
    from simvg.data.transforms import large_scale_jitter

    width, height, size = 300, 200, 100
    box = (240.0, 20.0, 290.0, 70.0)  # near the top-right corner
    pixels = np.zeros((height, width, 3), np.uint8)
    ratios, crops = [], 0
    for seed in range(60):
        image, jitter = large_scale_jitter(pixels, width, height, size, box, (0.3, 1.4), np.random.default_rng(seed))
        assert image.shape[:2] == (jitter.height, jitter.width)
        ratio = jitter.scale_x * max(width, height) / size  # the drawn jitter factor
        ratios.append(ratio)
        placed = jitter.box(box)
        assert placed is not None
        scaled = (box[2] - box[0]) * jitter.scale_x * (box[3] - box[1]) * jitter.scale_y
        kept = (placed[2] - placed[0]) * (placed[3] - placed[1]) / scaled
        if ratio > 1.0:  # cropped to the unjittered size (longer side `size`), keeping >= half the target
            crops += 1
            assert (jitter.width, jitter.height) == (size, round(height * size / width))
            assert kept >= 0.5 - 1e-6
        else:  # only rescaled
            assert (jitter.left, jitter.top) == (0, 0) and kept == pytest.approx(1.0)
    assert min(ratios) >= 0.3 - 0.01 and max(ratios) <= 1.4 + 0.01 and 10 < crops < 50


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_jittered_box_follows_the_object_and_nothing_flips(tokenizer, resize):
    augment = AugmentConfig(scale=[0.3, 1.4], flip=0.0, color=0.0, mode="lsj")
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20, augment=augment, resize=resize)
    image = scene(200, 150, (120, 30, 170, 90))
    targets = set()
    for seed in range(16):
        sample = pre(image, "the red box on the left", (120, 30, 170, 90), seed=seed)
        assert sample.phrase == "the red box on the left"
        cx, cy, w, h = (sample.target * 96).tolist()
        targets.add((round(cx), round(w)))
        # Blur from down-scaling softens the edges: look inside the box.
        assert red_fraction(sample, (cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4)) > 0.9
        assert (sample.image[:, ~sample.pixel_mask] == 0).all()
        if resize == "stretch":
            assert bool(sample.pixel_mask.all())
    assert len(targets) > 4  # the jitter moves and scales the target


def test_jitter_moves_the_landmark_and_scene_with_the_target(tokenizer):
    augment = AugmentConfig(scale=[1.4, 1.4], flip=0.0, color=0.0, mode="lsj")
    pre = Preprocessor(tokenizer, image_size=100, max_text_length=20, augment=augment, resize="stretch")
    image = scene(200, 100, (60, 40, 80, 60))
    # Every crop keeps the target and the landmark whole; some cut the "edge" object's centre away.
    objects = [((60, 40, 80, 60), "target"), ((100, 45, 120, 65), "landmark"), ((160, 20, 180, 40), "edge")]
    edge_seen = set()
    for seed in range(12):
        sample = pre(image, "the square", (60, 40, 80, 60), seed=seed, landmark_xyxy=(100, 45, 120, 65),
                     scene_objects=objects)  # fmt: skip
        found = {category: (x, y) for x, y, category in sample.meta["objects"]}
        tx, ty, tw, th = sample.target.tolist()
        assert found["target"] == pytest.approx((tx, ty), abs=1e-4)
        per_x, per_y = tw / 20, th / 20  # normalised units per original pixel
        # x 200 px -> 140 jittered, cropped to 100 (1 : 1 to the input); y 100 -> 70, cropped to 50, stretched x 2.
        assert (per_x, per_y) == pytest.approx((0.007, 0.014), abs=1e-4)
        landmark = (tx + per_x * (110 - 70), ty + per_y * (55 - 50))
        assert sample.meta["landmark"] == pytest.approx(landmark, abs=0.005)
        assert found["landmark"] == pytest.approx(landmark, abs=0.005)
        edge_visible = tx + per_x * (170 - 70) < 1.0
        edge_seen.add(edge_visible)
        assert ("edge" in found) == edge_visible, seed
    assert edge_seen == {True, False}


def test_jitter_keeps_every_target_of_a_set_and_jitters_phrases_without_one(tokenizer):
    augment = AugmentConfig(scale=[0.3, 1.4], flip=0.0, color=0.0, mode="lsj")
    pre = Preprocessor(tokenizer, image_size=96, max_text_length=20, augment=augment, resize="stretch")
    pixels = np.full((150, 200, 3), 90, np.uint8)
    boxes = [(20, 30, 60, 70), (130, 80, 180, 130)]
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = (250, 10, 10)
    image = LoadedImage(pixels, 200, 150)
    for seed in range(10):
        sample = pre(image, "all the red boxes", boxes_xyxy=boxes, seed=seed)
        assert sample.target is None and sample.target_set.shape == (2, 4)
        for cx, cy, w, h in (sample.target_set * 96).tolist():
            assert red_fraction(sample, (cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4)) > 0.9
    empty = [pre(image, "the green box", boxes_xyxy=[], seed=seed) for seed in range(6)]
    assert all(s.target_set.shape == (0, 4) for s in empty)
    assert len({s.image[0].float().mean().round(decimals=1).item() for s in empty}) > 1  # jittered: crops differ
