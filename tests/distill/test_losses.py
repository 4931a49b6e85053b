import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    FeatureMimic,
    attention_map,
    attention_transfer_loss,
    box_distillation_loss,
    joint_kd_loss,
    kd_loss,
    mean_distribution_logits,
)

LOWEST = torch.finfo(torch.float32).min


def _kl(student, teacher, temperature):
    p = F.softmax(teacher / temperature, dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)
    return (p * (p.log() - log_q)).sum(-1).mean()


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits.clone(), 4.0).abs() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.0])
def test_kd_loss_is_t_squared_times_batchmean_kl(temperature):
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    expected = temperature**2 * _kl(s, t, temperature)
    assert torch.allclose(kd_loss(s, t, temperature), expected, atol=1e-6)


def test_kd_loss_detaches_the_teacher():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("mask", [float("-inf"), LOWEST])
def test_kd_loss_over_masked_classes_is_the_kl_over_the_others(mask):
    # Masked attention cells (padding, or left out by a relation) hold -inf or float32's lowest.
    s, t = torch.randn(3, 8), torch.randn(3, 8)
    kept = torch.tensor([True, True, False, True, True, False, True, True])
    masked_s, masked_t = s.masked_fill(~kept, mask), t.masked_fill(~kept, mask)
    expected = 9.0 * _kl(s[:, kept], t[:, kept], 3.0)
    assert torch.allclose(kd_loss(masked_s, masked_t, 3.0), expected, atol=1e-6)


def test_kd_loss_is_finite_where_teacher_and_student_mask_different_classes():
    s = torch.randn(2, 6).masked_fill(torch.tensor([False, True, False, False, False, False]), LOWEST)
    s.requires_grad_()
    t = torch.randn(2, 6).masked_fill(torch.tensor([False, False, False, True, False, False]), LOWEST)
    t[:, 1] = 5.0  # the teacher's best class is one the student masks
    loss = kd_loss(s, t, 3.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # The masked class's share is bounded: the student's other classes still learn the teacher's order.
    assert loss < 9.0 * 6 * (torch.log(torch.tensor(6.0)) + 30.0)


def test_mean_distribution_logits_give_the_mean_of_the_distributions():
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    a[:, 2] = LOWEST  # one teacher leaves a class out: the other keeps it possible
    mixed = mean_distribution_logits([a, b], 3.0)
    expected = (F.softmax(a / 3.0, dim=-1) + F.softmax(b / 3.0, dim=-1)) / 2
    assert torch.allclose(F.softmax(mixed / 3.0, dim=-1), expected, atol=1e-6)
    assert (F.softmax(mixed / 3.0, dim=-1)[:, 2] > 0).all()
    # One model: its own distribution; the KD loss to it is the KD loss to that model.
    s = torch.randn(4, 7)
    assert torch.allclose(kd_loss(s, mean_distribution_logits([b], 3.0), 3.0), kd_loss(s, b, 3.0), atol=1e-5)


def test_attention_maps_are_unit_norm_and_scale_invariant():
    x = torch.randn(3, 8, 5, 6)
    at = attention_map(x)
    assert at.shape == (3, 30)
    assert torch.allclose(at.norm(dim=1), torch.ones(3))
    assert torch.allclose(attention_map(2.5 * x), at, atol=1e-6)
    expected = F.normalize(x.pow(2).mean(1).flatten(1), dim=1)
    assert torch.allclose(at, expected)
    assert attention_map(x, size=(10, 12)).shape == (3, 120)


def test_attention_transfer_loss_zero_for_identical_maps_and_beta_scaling():
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert attention_transfer_loss(feats, [f.clone() for f in feats]) == 0

    s = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    t = [torch.randn(2, 6, 8, 8) for _ in range(3)]  # channel counts may differ
    per_pair = [(attention_map(a) - attention_map(b)).pow(2).mean() for a, b in zip(s, t)]
    # beta is rescaled by 3 / number of maps, so three maps use beta as is.
    assert torch.allclose(attention_transfer_loss(s, t, beta=1000.0), 1000.0 * sum(per_pair))
    one = attention_transfer_loss(s[:1], t[:1], beta=1000.0)
    assert torch.allclose(one, 3000.0 * per_pair[0])


def test_attention_transfer_resizes_the_student_map():
    s = torch.randn(2, 4, 4, 4, requires_grad=True)
    t = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = attention_transfer_loss([s], [t])
    loss.backward()
    assert loss > 0 and s.grad is not None and t.grad is None
    with pytest.raises(ValueError):
        attention_transfer_loss([s], [t, t])


def test_box_kd_is_zero_for_identical_boxes():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.1]])
    losses = box_distillation_loss(boxes, boxes.clone())
    assert set(losses) == {"loss_box_kd_l1", "loss_box_kd_giou"}
    assert losses["loss_box_kd_l1"] == 0
    assert losses["loss_box_kd_giou"].abs() < 1e-5


def test_box_kd_values_weights_and_detach():
    teacher = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], requires_grad=True)
    student = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]], requires_grad=True)
    raw = box_distillation_loss(student, teacher, l1_weight=1.0, giou_weight=1.0)
    # sample 2 is shifted by 0.1 in cx: L1 0.1; IoU 1/3, enclosing box = union, GIoU loss 2/3.
    assert torch.allclose(raw["loss_box_kd_l1"], torch.tensor(0.05))
    # (torchvision's GIoU adds 1e-7 to the union: ~1.5e-6 off 1/3 for these 0.2 x 0.2 boxes)
    assert torch.allclose(raw["loss_box_kd_giou"], torch.tensor(1 / 3), atol=1e-5)

    default = box_distillation_loss(student, teacher)
    assert torch.allclose(default["loss_box_kd_l1"], 5 * raw["loss_box_kd_l1"])
    assert torch.allclose(default["loss_box_kd_giou"], 2 * raw["loss_box_kd_giou"])

    only_first = box_distillation_loss(student, teacher, weights=torch.tensor([1.0, 0.0]))
    assert only_first["loss_box_kd_l1"] == 0
    only_second = box_distillation_loss(student, teacher, torch.tensor([0.0, 3.0]), 1.0, 1.0)
    assert torch.allclose(only_second["loss_box_kd_l1"], torch.tensor(0.1))
    uniform = box_distillation_loss(student, teacher, torch.tensor([0.7, 0.7]), 1.0, 1.0)
    assert torch.allclose(uniform["loss_box_kd_giou"], raw["loss_box_kd_giou"])

    sum(default.values()).backward()
    assert student.grad is not None and teacher.grad is None


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((4, 16), (4, 32)), ((4, 5, 16), (4, 5, 32)), ((4, 16, 3, 3), (4, 32, 3, 3))],
)
def test_feature_mimic_connector_shapes(student_shape, teacher_shape):
    mimic = FeatureMimic(16, 32)
    assert mimic.project(torch.randn(student_shape)).shape == teacher_shape
    assert mimic(torch.randn(student_shape), torch.randn(teacher_shape)).dim() == 0


def test_feature_mimic_maps_are_a_1x1_conv_of_the_linear():
    mimic = FeatureMimic(6, 4)
    x = torch.randn(2, 6, 3, 5)
    as_tokens = mimic.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(mimic.project(x), as_tokens, atol=1e-6)
    with pytest.raises(ValueError):
        mimic(x, torch.randn(2, 4, 3, 4))


def test_feature_mimic_learns_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    mimic = FeatureMimic(8, 12)
    student = torch.randn(32, 8)
    teacher = (student @ torch.randn(8, 12)).requires_grad_()
    optimizer = torch.optim.SGD(mimic.parameters(), lr=0.2)
    losses = []
    for _ in range(30):
        loss = mimic(student, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert teacher.grad is None


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_joint_kd_loss_is_one_kl_per_sample_summed_over_positions(temperature):
    s, t = torch.randn(3, 6, 2), torch.randn(3, 6, 2)
    per_position = [[_kl(s[b, n][None], t[b, n][None], temperature) for n in range(6)] for b in range(3)]
    expected = temperature**2 * sum(sum(row) for row in per_position) / 3
    assert joint_kd_loss(s, t, temperature) == pytest.approx(float(expected), rel=1e-4)
    # Positions where student and teacher agree (and masked ones) add nothing.
    agree = torch.randn(3, 10, 2)
    masked = torch.stack([torch.full((3, 4), LOWEST), torch.zeros(3, 4)], dim=-1)
    more_s, more_t = torch.cat([s, agree, masked], dim=1), torch.cat([t, agree.clone(), masked.clone()], dim=1)
    assert joint_kd_loss(more_s, more_t, temperature) == pytest.approx(float(joint_kd_loss(s, t, temperature)), rel=1e-4)
    assert joint_kd_loss(s, s.clone(), temperature).abs() < 1e-6
    with pytest.raises(ValueError, match="joint_kd_loss"):
        joint_kd_loss(s[0], t[0], temperature)
