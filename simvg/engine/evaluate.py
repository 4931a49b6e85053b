"""Evaluation: predict every expression of a split and score the boxes.

Every branch is scored our way (boxes in original pixels, each expression counted once) and
SimVG's way (boxes in the model's input frame, Acc@0.5 averaged per batch:
``official_acc@0.5``). A split whose records carry no target or several targets
(``boxes_xyxy``) is also scored as generalized grounding (GREC: ``f1_acc``, ``n_acc``, and
``acc@0.5`` on its single-target part).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from simvg.data.dataset import Collator, GroundingDataset
from simvg.data.records import GroundingRecord
from simvg.data.transforms import letterbox_to_original
from simvg.engine.optim import autocast
from simvg.metrics import (
    batch_mean_accuracy,
    grec_metrics,
    grounding_metrics,
    paired_box_iou,
    resized_frame_iou,
)
from simvg.models.postprocess import query_boxes, select_boxes


def evaluation_loader(dataset: GroundingDataset, batch_size: int, num_workers: int, pad_token_id: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=Collator(pad_token_id),
        generator=torch.Generator(),
        persistent_workers=False,
    )


def target_boxes(record: GroundingRecord) -> list[tuple[float, float, float, float]]:
    """The record's ground-truth boxes, xyxy original pixels (``boxes_xyxy``; empty: no target)."""
    return [tuple(float(v) for v in box) for box in record.boxes_xyxy]


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    loader: DataLoader,
    branches: Sequence[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    nms_iou: float = 0.0,
    merge: str = "max",
) -> dict[str, list[dict]]:
    """Per branch, one result per expression: ref_id, image_id, expression, expression_type,
    pred_box (the branch's answer) and gt_box (None unless the record has exactly one box),
    xyxy original pixels; iou (original pixels) and official_iou (SimVG's, in the model's
    input frame), None without exactly one box; score; batch (the index of the evaluation
    batch); pred_boxes and pred_scores (every query of the branch) and gt_boxes (all of the
    record's boxes, possibly none). ``nms_iou`` and ``merge``: the model's ``model.head.answer_nms``
    and ``answer_merge`` (see :func:`~simvg.models.postprocess.query_boxes`)."""
    model.eval()
    dataset: GroundingDataset = loader.dataset
    image_size = dataset.preprocessor.image_size
    use_decoder = "decoder" in branches
    results: dict[str, list[dict]] = {branch: [] for branch in branches}
    for batch_index, batch in enumerate(tqdm(loader, desc="evaluating", disable=not progress, leave=False)):
        batch = batch.to(device)
        with autocast(device, amp_dtype):
            outputs = model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=use_decoder)
        records = [dataset.records[m["record_index"]] for m in batch.meta]
        gt_sets = [target_boxes(r) for r in records]
        single = [len(g) == 1 for g in gt_sets]
        gt = torch.tensor([g[0] if s else (0.0, 0.0, 0.0, 0.0) for g, s in zip(gt_sets, single)], dtype=torch.float64)
        scales = torch.tensor([[lb.scale_x, lb.scale_y] for lb in batch.letterboxes], dtype=torch.float64)
        sizes = torch.tensor([[lb.width, lb.height] for lb in batch.letterboxes], dtype=torch.float64)
        for branch in branches:
            boxes, scores = select_boxes(outputs, branch)
            pred = letterbox_to_original(boxes.cpu(), image_size, batch.letterboxes).double()
            ious = paired_box_iou(pred, gt)
            official = resized_frame_iou(boxes.cpu(), gt, image_size, scales, sizes)
            every_box, every_score = query_boxes(outputs, branch, nms_iou, merge)
            q = every_box.shape[1]
            every_pred = letterbox_to_original(every_box.cpu().reshape(-1, 4), image_size,
                                               [lb for lb in batch.letterboxes for _ in range(q)]).reshape(-1, q, 4)  # fmt: skip
            for i, record in enumerate(records):
                meta = batch.meta[i]
                results[branch].append(
                    {
                        "ref_id": record.ref_id,
                        "image_id": record.image_id,
                        "expression": record.expressions[meta["expression_index"]],
                        "expression_type": meta["expression_type"],
                        "pred_box": [round(v, 2) for v in pred[i].tolist()],
                        "gt_box": [round(v, 2) for v in gt[i].tolist()] if single[i] else None,
                        "iou": round(float(ious[i]), 4) if single[i] else None,
                        "official_iou": round(float(official[i]), 4) if single[i] else None,
                        "score": round(float(scores[i]), 4),
                        "batch": batch_index,
                        "pred_boxes": [[round(v, 2) for v in box] for box in every_pred[i].tolist()],
                        "pred_scores": [round(v, 4) for v in every_score[i].tolist()],
                        "gt_boxes": [[round(v, 2) for v in box] for box in gt_sets[i]],
                    }
                )
    return results


def is_generalized(rows: Sequence[dict]) -> bool:
    """Whether any result's record has no target or several (a GREC split)."""
    return any(len(r["gt_boxes"]) != 1 for r in rows)


def branch_metrics(rows: Sequence[dict], batch_size: int | None = None) -> dict:
    """Metrics of one branch's results (:func:`predict_split`).

    Always :func:`~simvg.metrics.grounding_metrics` over the expressions with exactly one
    target box ("acc@0.5", "acc@0.75", "miou", "count", "per_type"). On a split without
    generalized records, also "official_acc@0.5": SimVG's figure (IoU in the model's input
    frame, accuracy per evaluation batch averaged over batches; ``batch_size``, where given,
    is recorded as "official_batch_size"). On a generalized split, also the GREC metrics
    (:func:`~simvg.metrics.grec_metrics`): "f1_acc", "n_acc", "no_target_count",
    "multi_target_count" ("acc@0.5" is then the single-target part's, as GREC reports it).
    """
    single = [r for r in rows if r["iou"] is not None]
    metrics = grounding_metrics([r["iou"] for r in single], [r["expression_type"] for r in single])
    if not is_generalized(rows):
        by_batch: dict[int, list[float]] = defaultdict(list)
        for r in rows:
            by_batch[r["batch"]].append(r["official_iou"])
        metrics["official_acc@0.5"] = batch_mean_accuracy(list(by_batch.values()))
        if batch_size is not None:
            metrics["official_batch_size"] = batch_size
        return metrics
    grec = grec_metrics([(r["pred_boxes"], r["pred_scores"]) for r in rows], [r["gt_boxes"] for r in rows])
    metrics |= {key: grec[key] for key in ("f1_acc", "n_acc", "no_target_count", "multi_target_count")}
    metrics["grec_count"] = grec["count"]
    return metrics


def summarize(results: dict[str, list[dict]], batch_size: int | None = None) -> dict[str, dict]:
    """Per branch, :func:`branch_metrics` of its results."""
    return {branch: branch_metrics(rows, batch_size) for branch, rows in results.items()}


def selection_score(metrics: dict[str, dict], best_metric: str) -> float:
    """The validation figure that picks a run's best checkpoint (``train.best_metric``): a
    branch's F1-accuracy on a generalized split, else its Acc@0.5; "first" takes the first
    evaluated branch, "mean" the mean over the evaluated branches (SimVG's choice when both
    branches run)."""

    def figure(branch: str) -> float:
        m = metrics[branch]
        return m["f1_acc"] if "f1_acc" in m else m["acc@0.5"]

    if best_metric == "mean":
        return sum(figure(b) for b in metrics) / len(metrics)
    branch = next(iter(metrics)) if best_metric == "first" else best_metric
    if branch not in metrics:
        raise ValueError(f"train.best_metric is '{best_metric}' but only {', '.join(metrics)} is evaluated")
    return figure(branch)
