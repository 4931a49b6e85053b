"""Evaluation: predict every expression of a split and score the boxes in original pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from simvg.data.dataset import Collator, GroundingDataset
from simvg.data.transforms import letterbox_to_original
from simvg.engine.optim import autocast
from simvg.metrics import grounding_metrics, paired_box_iou
from simvg.models.postprocess import select_boxes


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


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    loader: DataLoader,
    branches: Sequence[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, list[dict]]:
    """Per branch, one result per expression: expression, type, pred_box, gt_box (xyxy
    original pixels), iou, score, ref_id."""
    model.eval()
    dataset: GroundingDataset = loader.dataset
    image_size = dataset.preprocessor.image_size
    use_decoder = "decoder" in branches
    results: dict[str, list[dict]] = {branch: [] for branch in branches}
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        batch = batch.to(device)
        with autocast(device, amp_dtype):
            outputs = model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=use_decoder)
        records = [dataset.records[m["record_index"]] for m in batch.meta]
        gt = torch.tensor([r.box_xyxy for r in records], dtype=torch.float64)
        for branch in branches:
            boxes, scores = select_boxes(outputs, branch)
            pred = letterbox_to_original(boxes.cpu(), image_size, batch.letterboxes).double()
            ious = paired_box_iou(pred, gt)
            for i, record in enumerate(records):
                meta = batch.meta[i]
                results[branch].append(
                    {
                        "ref_id": record.ref_id,
                        "image_id": record.image_id,
                        "expression": record.expressions[meta["expression_index"]],
                        "expression_type": meta["expression_type"],
                        "pred_box": [round(v, 2) for v in pred[i].tolist()],
                        "gt_box": [round(v, 2) for v in gt[i].tolist()],
                        "iou": round(float(ious[i]), 4),
                        "score": round(float(scores[i]), 4),
                    }
                )
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per branch, :func:`grounding_metrics` of its results."""
    return {
        branch: grounding_metrics([r["iou"] for r in rows], [r["expression_type"] for r in rows])
        for branch, rows in results.items()
    }
