"""Where a set-answering model says "nothing here" wrongly, by kind of phrase. On a generalized
split (SynthRef-G), for each family of phrases (attribute, location, relation, comparison;
single-target, multi-target and no-target phrases of a family together): the share answered
right under the GREC protocol (F1 = 1 at score >= 0.7), the AUROC of the presence head's
probability for phrases that name something against those that name nothing, the share of
named phrases whose presence is under 0.7 and of no-target phrases whose presence reaches it,
and, as a control, the AUROC of the pointer's highest raw logit (does its level say whether
anything matches?). Where the records carry SynthRef's programs, the same by kind of phrase and
program (a location phrase by an extreme, "the leftmost circle", or by a region, "the circle on
the left"; a relation by a direction, "left of", or a distance, "nearest to"). Then the
F1-accuracy the same predictions would have at other thresholds than the protocol's: where the
scores put the best threshold.

    python bench/presence_by_type.py runs/teacher_g/best --data-root data --split val

Writes bench/results/presence_by_type.md (--out).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

from simvg.benchmark import save_table
from simvg.data.dataset import GroundingDataset
from simvg.data.readers import load_records
from simvg.engine.evaluate import evaluation_loader, predict_split
from simvg.inference import Grounder
from simvg.metrics import GREC_SCORE_THRESHOLD, auroc, grec_match

RESULTS = Path(__file__).resolve().parent / "results"


def family(expression_type: str) -> str:
    """"no_target_relation", "multi_relation" and "relation" are all "relation"."""
    return expression_type.removeprefix("no_target_").removeprefix("multi_")


@torch.no_grad()
def presence_and_pointer(grounder: Grounder, loader) -> list[tuple[float, float]]:
    """Per phrase, in loader order: (presence probability, the pointer's highest raw logit)."""
    out = []
    for batch in loader:
        batch = batch.to(grounder.device)
        token = grounder.model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=False)["token"]
        pointer = token["ref_logits"].masked_fill(token["ref_logits"] <= torch.finfo(torch.float32).min / 2, float("-inf"))
        out += list(zip(token["presence_logits"].sigmoid().tolist(), pointer.amax(dim=-1).tolist()))
    return out


def program_kind(program: dict | None) -> str | None:
    """A SynthRef program's operation, a relation's split into direction and distance."""
    if not program:
        return None
    if program["op"] in ("relate", "relate_all"):
        return "distance" if program["arg"] in ("closest", "farthest") else "direction"
    return program["op"]


def f1_accuracy(rows: list[dict], threshold: float) -> float:
    return 100 * sum(grec_match(r["pred_boxes"], r["pred_scores"], r["gt_boxes"], threshold).correct for r in rows) / len(rows)


def percent(items: list, test) -> str:
    return f"{100 * sum(map(test, items)) / len(items):.1f}" if items else "–"


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="synthref-g")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=RESULTS / "presence_by_type.md")
    args = parser.parse_args()

    grounder = Grounder.from_pretrained(args.checkpoint)
    if grounder.config.model.head.num_queries <= 1:
        raise SystemExit(f"{args.checkpoint} answers once per phrase: it has no presence head")
    records = load_records(args.data_root, args.dataset, args.split, None)
    dataset = GroundingDataset(records, grounder.preprocessor, train=False)
    loader = evaluation_loader(dataset, 64, 0, grounder.tokenizer.pad_token_id)
    programs = [(records[i].extra.get("programs") or [None] * len(records[i].expressions))[j] for i, j in dataset.items]
    head = grounder.config.model.head
    rows = predict_split(grounder.model, loader, ["token"], grounder.device, nms_iou=head.answer_nms, merge=head.answer_merge)["token"]
    extra = presence_and_pointer(grounder, loader)

    groups: dict[str, list] = defaultdict(list)
    by_program: dict[str, list] = defaultdict(list)
    for row, (presence, pointer), program in zip(rows, extra, programs, strict=True):
        right = grec_match(row["pred_boxes"], row["pred_scores"], row["gt_boxes"]).correct
        groups[family(row["expression_type"])].append((bool(row["gt_boxes"]), presence, pointer, right))
        if (kind := program_kind(program)) is not None:
            by_program[f"{row['expression_type']} ({kind})"].append((bool(row["gt_boxes"]), presence, right))
    threshold = GREC_SCORE_THRESHOLD
    lines = [
        f"{args.checkpoint} on {args.dataset} {args.split}, token branch; presence = the presence head's probability; "
        f"a phrase is right when F1 = 1 at score >= {threshold}.",
        "",
        "| phrases | named | no target | right (F1 = 1) % | presence AUROC | named, presence < 0.7 % "
        "| no target, presence >= 0.7 % | pointer's top logit AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    families = sorted(groups)
    groups["all"] = [x for name in families for x in groups[name]]
    for name in [*families, "all"]:
        g = groups[name]
        named = [x for x in g if x[0]]
        none = [x for x in g if not x[0]]
        lines.append(f"| {name} | {len(named)} | {len(none)} | {percent(g, lambda x: x[3])} "
                     f"| {fmt(auroc([x[1] for x in g], [x[0] for x in g]))} | {percent(named, lambda x: x[1] < 0.7)} "
                     f"| {percent(none, lambda x: x[1] >= 0.7)} | {fmt(auroc([x[2] for x in g], [x[0] for x in g]))} |")  # fmt: skip
    if by_program:
        lines += ["", "By kind of phrase and program (SynthRef's generator):", "",
                  "| phrases (program) | count | right (F1 = 1) % | median presence | presence < 0.7 % |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name in sorted(by_program):
            g = by_program[name]
            median = sorted(x[1] for x in g)[len(g) // 2]
            lines.append(f"| {name} | {len(g)} | {percent(g, lambda x: x[2])} | {median:.2f} "
                         f"| {percent(g, lambda x: x[1] < 0.7)} |")  # fmt: skip
    scan = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    lines += ["", "F1-accuracy (% of phrases with F1 = 1) if the protocol's threshold were another:", "",
              "| threshold | " + " | ".join(map(str, scan)) + " |", "|---|" + "---|" * len(scan),
              "| F1-accuracy | " + " | ".join(f"{f1_accuracy(rows, t):.2f}" for t in scan) + " |"]  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    sys.exit(main())
