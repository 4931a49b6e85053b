"""Distillation losses: logits or any distribution (KD), attention maps (AT), boxes, and
feature mimicking.

Teacher inputs are always detached: gradients flow into the student (and the learned
connector of ``FeatureMimic``) only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

# How far below its row's best a tempered logit may lie. Masked classes (-inf, or float32's
# lowest as attention masks write them) are raised to this floor so that every KL stays
# finite; a class e^-30 as likely as the best one weighs nothing measurable in any KL.
MASKED_LOGIT_GAP = 30.0


def tempered_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T) over the last dim, with masked classes floored.

    Each row's tempered logits are raised to at least (its maximum - MASKED_LOGIT_GAP), the
    floor itself detached: -inf or float32's lowest on a masked class becomes a probability
    of about e^-30 instead of 0, so a KL between distributions that mask different classes
    is finite (its gradient, softmax(s/T) - softmax(t/T) per class, never needed this), and
    unmasked logits within the gap, all that ordinary logits ever span, are left unchanged.

    Args:
        logits: (..., C).
        temperature: T > 0.

    Returns:
        (..., C) log-probabilities.
    """
    scaled = logits / temperature
    floor = (scaled.amax(dim=-1, keepdim=True) - MASKED_LOGIT_GAP).detach()
    return F.log_softmax(torch.maximum(scaled, floor), dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation loss T^2 * KL(softmax(t / T) || softmax(s / T)).

    Args:
        student_logits, teacher_logits: (B, C), or (..., C) where every leading position
            counts as one sample. Masked classes (-inf or float32's lowest) are allowed in
            either, also where the other does not mask them (see
            :func:`tempered_log_softmax`).
        temperature: T > 0; the T^2 factor keeps gradient magnitudes comparable across T.

    Returns:
        Scalar: the KL summed over classes and averaged over samples ("batchmean").
    """
    num_classes = student_logits.shape[-1]
    if teacher_logits.shape[-1] != num_classes:
        raise ValueError(
            f"kd_loss: student logits have {num_classes} classes, teacher logits "
            f"{teacher_logits.shape[-1]}"
        )
    log_p_student = tempered_log_softmax(student_logits.reshape(-1, num_classes), temperature)
    log_p_teacher = tempered_log_softmax(
        teacher_logits.detach().reshape(-1, num_classes), temperature
    )
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def joint_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KD of predictions made independently at N positions (e.g. an object score per query or
    per image cell): T^2 * sum_n KL(softmax(t_n / T) || softmax(s_n / T)), summed over the N
    positions and averaged over the B samples.

    This is the KL between the two joint distributions of the N independent predictions, so
    its scale is one KL per sample whatever N: positions where teacher and student agree
    (e.g. cells both call "no object") add nothing, and a position where they disagree weighs
    as much as in a single prediction. Masked classes are allowed as in :func:`kd_loss`.

    Args:
        student_logits, teacher_logits: (B, N, C).
        temperature: T > 0.

    Returns:
        Scalar (0, in the graph, for B = 0 or N = 0).
    """
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"joint_kd_loss: logits must both be (B, N, C), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    b, n, c = student_logits.shape
    if b * n == 0:
        return student_logits.sum() * 0.0
    kd = kd_loss(student_logits.reshape(b * n, c), teacher_logits.reshape(b * n, c), temperature)
    return kd * n


def mean_distribution_logits(logits: Sequence[Tensor], temperature: float) -> Tensor:
    """Logits whose tempered softmax is the mean of several models' tempered distributions.

    T * log(mean_j softmax(logits_j / T)): passed to :func:`kd_loss` at the same T, the
    target is the average of the models' distributions (a class any one of them keeps stays
    possible, which averaged logits would lose where another model masks it).

    Args:
        logits: K tensors (..., C) of one shape; detached.
        temperature: T > 0, the temperature of the KD loss that will read the result.

    Returns:
        (..., C) logits (-inf where every model masks a class).
    """
    if not logits:
        raise ValueError("mean_distribution_logits needs at least one tensor of logits")
    probs = torch.stack([F.softmax(t.detach().float() / temperature, dim=-1) for t in logits])
    return probs.mean(dim=0).log() * temperature


def attention_map(features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (as used by Moonshine).

    Args:
        features: (B, C, H, W) activations.
        size: optional (H', W'); the channel-mean map is resized to it (bilinear) before
            flattening, so that maps of stages with different resolutions can be compared.

    Returns:
        (B, H*W) (or (B, H'*W')): the channel mean of x^2, flattened and L2-normalised per
        sample, so every row has unit norm.
    """
    energy = features.pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        energy = F.interpolate(energy, size=size, mode="bilinear", align_corners=False)
    return F.normalize(energy.flatten(1), dim=1)


def attention_transfer_loss(
    student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], beta: float = 1000.0
) -> Tensor:
    """Attention-transfer loss summed over matched (student, teacher) feature maps.

    Each pair contributes mean((at(s) - at(t))^2), the mean taken over batch and positions.
    The sum is weighted by beta * 3 / number of pairs, the reference code's rescaling
    (beta was tuned for three maps). Channel counts may differ within a pair; if the
    spatial sizes differ, the student's map is resized (bilinear) to the teacher's.

    Args:
        student_features, teacher_features: equally long sequences of (B, C, H, W) maps.
        beta: AT weight, 1e3 in Moonshine.

    Returns:
        Scalar loss.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            "attention_transfer_loss needs equally many (>= 1) student and teacher maps, "
            f"got {len(student_features)} and {len(teacher_features)}"
        )
    total = student_features[0].new_zeros(())
    for s, t in zip(student_features, teacher_features):
        t = t.detach()
        at_t = attention_map(t)
        at_s = attention_map(s, size=tuple(t.shape[-2:]))
        total = total + (at_s - at_t).pow(2).mean()
    return total * (beta * 3 / len(student_features))


def box_distillation_loss(
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    weights: Tensor | None = None,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> dict[str, Tensor]:
    """DETR-style box regression towards the teacher's boxes (box-level distillation).

    Args:
        student_boxes, teacher_boxes: (B, 4) normalised (cx, cy, w, h).
        weights: optional (B,) non-negative per-sample weights (e.g. teacher confidence);
            the losses become weighted means sum(w * l) / sum(w). Detached. Without it the
            losses are plain means over the B samples.
        l1_weight, giou_weight: coefficients already applied to the returned entries
            (DETR/SimVG use 5 and 2); pass 1.0 to get the raw losses.

    Returns:
        {"loss_box_kd_l1": l1_weight * mean L1 distance (summed over the 4 coordinates),
         "loss_box_kd_giou": giou_weight * mean (1 - GIoU)}, scalars.
    """
    if student_boxes.shape != teacher_boxes.shape or student_boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must both be (B, 4), got {tuple(student_boxes.shape)} and "
            f"{tuple(teacher_boxes.shape)}"
        )
    teacher_boxes = teacher_boxes.detach()
    l1 = (student_boxes - teacher_boxes).abs().sum(dim=-1)
    giou = generalized_box_iou_loss(
        box_convert(student_boxes, "cxcywh", "xyxy"),
        box_convert(teacher_boxes, "cxcywh", "xyxy"),
        reduction="none",
    )
    if weights is None:
        l1, giou = l1.mean(), giou.mean()
    else:
        w = weights.detach().to(l1.dtype).reshape(-1)
        norm = w.sum().clamp_min(torch.finfo(w.dtype).eps)
        l1, giou = (w * l1).sum() / norm, (w * giou).sum() / norm
    return {"loss_box_kd_l1": l1 * l1_weight, "loss_box_kd_giou": giou * giou_weight}


class FeatureMimic(nn.Module):
    """Learned connector + MSE: make student features predict (detached) teacher features.

    The connector maps the student's channel dimension to the teacher's. It is a Linear
    layer on the last dim for (B, C) and (B, N, C) inputs and, for (B, C, H, W) maps, the
    same weights used as a 1x1 convolution, so one module serves every layout.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def project(self, student: Tensor) -> Tensor:
        """student: (B, C_s) | (B, N, C_s) | (B, C_s, H, W) -> same layout with C_t."""
        if student.dim() == 4:
            return F.conv2d(student, self.proj.weight[:, :, None, None], self.proj.bias)
        return self.proj(student)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Scalar MSE between the projected student and the teacher features."""
        projected = self.project(student)
        if projected.shape != teacher.shape:
            raise ValueError(
                f"FeatureMimic: projected student {tuple(projected.shape)} does not match "
                f"teacher {tuple(teacher.shape)}"
            )
        return F.mse_loss(projected, teacher.detach())
