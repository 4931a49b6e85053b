"""Metrics on hand-made cases: SimVG's protocol, GREC (F1-accuracy, N-acc), score ranking."""

import pytest
import torch
from PIL import Image

from simvg.metrics import (
    answer_is_right,
    auroc,
    batch_mean_accuracy,
    expected_calibration_error,
    grec_match,
    grec_metrics,
    plot_reliability,
    reliability_bins,
    resized_frame_iou,
)

TARGET = [10.0, 10.0, 50.0, 50.0]
OTHER = [60.0, 60.0, 90.0, 100.0]


# --- GREC: one sample ---


def test_no_target_is_right_only_without_a_kept_prediction():
    assert grec_match([], [], []).correct and grec_match([], [], []).f1 == 1.0
    # Below the 0.7 score threshold: not a prediction.
    assert grec_match([TARGET], [0.69], []).correct
    wrong = grec_match([TARGET, OTHER], [0.7, 0.9], [])
    assert not wrong.correct and wrong.false_positives == 2 and wrong.f1 == 0.0


def test_single_target_matched_with_nothing_else_is_right():
    match = grec_match([TARGET, OTHER], [0.95, 0.2], [TARGET])
    assert (match.true_positives, match.false_positives, match.false_negatives) == (1, 0, 0) and match.correct


def test_a_target_without_a_kept_prediction_is_wrong():
    match = grec_match([TARGET], [0.5], [TARGET])
    assert (match.true_positives, match.false_positives, match.false_negatives) == (0, 0, 1)
    assert match.f1 == 0.0 and not match.correct


def test_a_duplicate_box_is_a_false_positive():
    match = grec_match([TARGET, [11.0, 10.0, 50.0, 51.0]], [0.9, 0.8], [TARGET])
    assert (match.true_positives, match.false_positives, match.false_negatives) == (1, 1, 0)
    assert match.f1 == pytest.approx(2 / 3) and not match.correct


def test_multi_target_partial_and_full_match():
    partial = grec_match([TARGET], [0.9], [TARGET, OTHER])
    assert (partial.true_positives, partial.false_negatives) == (1, 1) and partial.f1 == pytest.approx(2 / 3)
    assert not partial.correct
    full = grec_match([OTHER, TARGET], [0.8, 0.9], [TARGET, OTHER])
    assert full.true_positives == 2 and full.correct


def test_matching_is_greedy_on_the_best_pair_first():
    # A overlaps G1 (GIoU 0.74) and G2 (0.60); B is G1 and misses G2 (0.43). The best pair
    # (B, G1) goes first, so A takes G2; matching in score order (A first, to its best G1)
    # would leave B and G2 unmatched.
    g1, g2 = [0.0, 0.0, 10.0, 10.0], [0.0, 4.0, 10.0, 14.0]
    a, b = [0.0, 1.5, 10.0, 11.5], [0.0, 0.0, 10.0, 10.0]
    match = grec_match([a, b], [0.99, 0.9], [g1, g2])
    assert match.true_positives == 2 and match.correct


def test_matching_uses_generalized_iou_as_simvg_does():
    # IoU 0.507 but GIoU 0.460: the official code's GIoU >= 0.5 rejects this match.
    pred, gt = [0.0, 0.0, 10.0, 10.0], [1.8, 1.8, 11.8, 11.8]
    from torchvision.ops import box_iou, generalized_box_iou

    assert float(box_iou(torch.tensor([pred]), torch.tensor([gt]))) >= 0.5
    assert float(generalized_box_iou(torch.tensor([pred]), torch.tensor([gt]))) < 0.5
    assert not grec_match([pred], [0.9], [gt]).correct
    assert answer_is_right([pred], [0.9], [gt])  # the single-answer check is plain IoU


def test_the_frame_does_not_change_the_match():
    def scaled(boxes, sx, sy):
        return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]

    pred, gt = [[0.0, 0.0, 10.0, 10.0], [20.0, 5.0, 31.0, 19.0]], [[1.0, 1.0, 11.0, 12.0], [21.0, 5.0, 30.0, 20.0]]
    base = grec_match(pred, [0.9, 0.8], gt)
    assert grec_match(scaled(pred, 0.3, 2.5), [0.9, 0.8], scaled(gt, 0.3, 2.5)) == base


def test_boxes_and_scores_must_pair_up():
    with pytest.raises(ValueError, match="2 predicted boxes but 1 scores"):
        grec_match([TARGET, OTHER], [0.9], [TARGET])


# --- GREC: a split ---


def test_grec_metrics_over_a_mixed_split():
    predictions = [
        ([TARGET], [0.9]),  # single target, right
        ([OTHER], [0.9]),  # single target, wrong box
        ([TARGET], [0.3]),  # single target: right box, but not kept (F1 0), still right for Acc@0.5
        ([TARGET], [0.2]),  # no target, nothing kept: right
        ([TARGET], [0.95]),  # no target, a box kept: wrong
        ([TARGET, OTHER], [0.9, 0.8]),  # two targets, both found
    ]
    gt_sets = [[TARGET], [TARGET], [TARGET], [], [], [TARGET, OTHER]]
    m = grec_metrics(predictions, gt_sets)
    assert m["f1_acc"] == pytest.approx(100 * 3 / 6)
    assert m["n_acc"] == pytest.approx(50.0)
    assert m["acc@0.5"] == pytest.approx(100 * 2 / 3)
    assert (m["count"], m["no_target_count"], m["single_target_count"], m["multi_target_count"]) == (6, 2, 3, 1)


def test_grec_metrics_without_no_target_samples_has_no_n_acc():
    m = grec_metrics([([TARGET], [0.9])], [[TARGET]])
    assert m["n_acc"] is None and m["f1_acc"] == 100.0 and m["acc@0.5"] == 100.0
    assert grec_metrics([([TARGET], [0.1])], [[]])["acc@0.5"] is None


# --- SimVG's single-target protocol ---


def test_batch_mean_accuracy_weighs_each_batch_equally():
    # Pooled: 2 of 3 right (66.7%); SimVG: mean of 50% and 100%.
    assert batch_mean_accuracy([[0.9, 0.1], [0.7]]) == pytest.approx(75.0)
    assert batch_mean_accuracy([[0.5, 0.49]]) == pytest.approx(50.0)
    assert batch_mean_accuracy([]) == 0.0


def test_resized_frame_iou_clips_as_simvg_does():
    size = 100
    # A 200 x 50 image stretched to 100 x 100: scale (0.5, 2).
    scales, image_sizes = torch.tensor([[0.5, 2.0], [0.5, 2.0]]), torch.tensor([[200.0, 50.0], [200.0, 50.0]])
    gt = torch.tensor([[20.0, 10.0, 60.0, 30.0], [150.0, 0.0, 200.0, 50.0]])
    # The first prediction is the ground truth in the resized frame; the second sticks out of it.
    pred_xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0], [75.0, -20.0, 125.0, 100.0]]) / size
    pred = torch.cat([(pred_xyxy[:, :2] + pred_xyxy[:, 2:]) / 2, pred_xyxy[:, 2:] - pred_xyxy[:, :2]], dim=1)
    iou = resized_frame_iou(pred, gt, size, scales, image_sizes)
    assert float(iou[0]) == pytest.approx(1.0)
    # Prediction clipped to (75, 0, 100, 100); the ground truth first clipped to x <= 199, y <= 49 px.
    expected_gt = (75.0, 0.0, 199 * 0.5, 49 * 2.0)
    inter = (expected_gt[2] - 75.0) * (expected_gt[3] - 0.0)
    union = 25.0 * 100.0
    assert float(iou[1]) == pytest.approx(inter / union, rel=1e-5)


# --- scores that rank ---


def test_auroc_known_values():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5  # ties count one half
    assert auroc([0.3, 0.2], [True, True]) is None


def test_a_no_target_answer_is_never_right():
    assert not answer_is_right([TARGET], [0.99], [])
    assert answer_is_right([OTHER, TARGET], [0.2, 0.9], [OTHER, TARGET])
    assert not answer_is_right([OTHER, TARGET], [0.9, 0.2], [TARGET])  # the answer is the top-scoring box


def test_reliability_bins_and_calibration_error():
    scores = [0.05, 0.15, 0.95, 0.97, 1.0]
    right = [False, True, True, True, False]
    bins = reliability_bins(scores, right, num_bins=10)
    assert [b["count"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[2]["accuracy"] is None and bins[9]["accuracy"] == pytest.approx(2 / 3)
    assert bins[9]["mean_score"] == pytest.approx((0.95 + 0.97 + 1.0) / 3)
    ece = (1 * 0.05 + 1 * abs(1 - 0.15) + 3 * abs(2 / 3 - (0.95 + 0.97 + 1.0) / 3)) / 5
    assert expected_calibration_error(bins) == pytest.approx(ece)
    calibrated = reliability_bins([0.25] * 4 + [0.75] * 4, [True, False, False, False, True, True, True, False], 2)
    assert expected_calibration_error(calibrated) == pytest.approx(0.0)


def test_reliability_plot_is_a_png(tmp_path):
    path = tmp_path / "plots" / "reliability.png"
    plot_reliability(reliability_bins([0.1, 0.5, 0.9, 0.95], [False, True, True, True]), path, title="test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100
