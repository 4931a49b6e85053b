"""Generic knowledge-distillation tools (depends only on torch and torchvision).

- cheap_conv:  Moonshine's cheap convolution blocks and in-place conversion of a model
- wide_resnet: the CIFAR WideResNet of the Moonshine paper
- losses:      KD (masked classes allowed; per-position predictions), attention transfer,
               box distillation, learned feature mimicking
- hints:       FitNets hint training: fit a student module's features to a teacher's first
- one:         ONE, the on-the-fly native ensemble (gated branches + loss)
- takfl:       TAKFL task arithmetic: task vectors, merging and choosing λ
- hooks:       FeatureRecorder, forward hooks on named submodules
"""

from distill.cheap_conv import (
    BLOCK_PATTERNS,
    build_cheap_conv,
    convert_convs,
    count_parameters,
)
from distill.hints import fit_hints, hint_loss
from distill.hooks import FeatureRecorder, get_module
from distill.losses import (
    FeatureMimic,
    attention_map,
    attention_transfer_loss,
    box_distillation_loss,
    joint_kd_loss,
    kd_loss,
    mean_distribution_logits,
    tempered_log_softmax,
)
from distill.one import ONE, ONEOutput, gated_ensemble, one_kd_loss, one_loss, sigmoid_rampup
from distill.takfl import (
    heuristic_lambdas,
    merge_task_vectors,
    select_lambdas,
    self_regularised_kd_loss,
    task_vector,
    tune_lambdas,
    uniform_lambdas,
)
from distill.wide_resnet import WideResNet, wide_resnet

__all__ = [
    "BLOCK_PATTERNS",
    "FeatureMimic",
    "FeatureRecorder",
    "ONE",
    "ONEOutput",
    "WideResNet",
    "attention_map",
    "attention_transfer_loss",
    "box_distillation_loss",
    "build_cheap_conv",
    "convert_convs",
    "count_parameters",
    "fit_hints",
    "gated_ensemble",
    "get_module",
    "heuristic_lambdas",
    "hint_loss",
    "joint_kd_loss",
    "kd_loss",
    "mean_distribution_logits",
    "merge_task_vectors",
    "one_kd_loss",
    "one_loss",
    "select_lambdas",
    "self_regularised_kd_loss",
    "sigmoid_rampup",
    "task_vector",
    "tempered_log_softmax",
    "tune_lambdas",
    "uniform_lambdas",
    "wide_resnet",
]
