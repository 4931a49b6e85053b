"""What a token branch with a landmark relation (model.head.landmark_relation) does on SynthRef's
relational phrases: how often its landmark pointer's peak is the landmark's cell, the mean
relation coefficients per relation, and, for the phrases whose answer cell is wrong, whether
the attention before the relation's term already preferred the wrong cell.

    python bench/landmark_relation_probe.py CHECKPOINT --data-root DATA [--split val] [--out FILE.md]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from simvg.data.dataset import Collator, GroundingDataset, Preprocessor
from simvg.data.readers import load_records
from simvg.engine.checkpoint import load_checkpoint
from simvg.models.criterion import centre_cells, point_cells
from simvg.models.heads.token_branch import TokenBranch

FEATURES = ["distance", "x offset", "y offset", "landmark cell"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer, config, _ = load_checkpoint(args.checkpoint)
    branch = model.token_head
    if not isinstance(branch, TokenBranch) or branch.landmark_relation is None:
        parser.error(f"{args.checkpoint}: not a single token branch with a landmark relation")
    records = load_records(args.data_root, "synthref", args.split)
    dataset = GroundingDataset(records, Preprocessor(tokenizer, config.model.image_size, config.model.max_text_length),
                               train=False, landmarks=True)  # fmt: skip
    dataset.items = [(i, j) for i, j in dataset.items if records[i].extra["programs"][j]["op"] == "relate"]
    relations = [records[i].extra["programs"][j]["arg"] for i, j in dataset.items]

    relation = branch.landmark_relation
    seen: dict[str, torch.Tensor] = {}
    relation.register_forward_hook(lambda module, inputs, output: seen.update(
        coefficients=module.coefficients(inputs[0])))  # fmt: skip
    tally: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    coefficients: dict[str, list[torch.Tensor]] = defaultdict(list)
    k = 0
    for batch in DataLoader(dataset, batch_size=64, collate_fn=Collator(tokenizer.pad_token_id)):
        out = model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=False, all_cells=True)
        token, grid = out["token"], out["grid"]
        final, before = token["ref_logits"], token["content_logits"]
        target = centre_cells(batch.targets, grid)
        landmark = point_cells(torch.tensor([m["landmark"] for m in batch.meta]), grid)
        for row in range(len(batch.meta)):
            name, k = relations[k], k + 1
            t = tally[name]
            t["phrases"] += 1
            t["pointer"] += int(token["landmark_logits"][row].argmax() == landmark[row])
            coefficients[name].append(seen["coefficients"][row])
            pick = int(final[row].argmax())
            if pick != int(target[row]):
                t["misses"] += 1
                t["misses, wrong before the term"] += int(before[row, pick] > before[row, target[row]])

    lines = [f"Relational {args.split} phrases, token branch's answer cell (`{args.checkpoint}`)", "",
             "| relation | phrases | pointer on the landmark's cell | cell misses | of which the attention before the "
             "relation's term preferred the wrong cell | mean coefficients (" + ", ".join(FEATURES) + ") |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in sorted(tally):
        t = tally[name]
        mean = torch.stack(coefficients[name]).mean(0).tolist()
        lines.append(f"| {name} | {int(t['phrases'])} | {100 * t['pointer'] / t['phrases']:.1f}% | {int(t['misses'])} | "
                     f"{int(t['misses, wrong before the term'])} | {', '.join(f'{v:+.2f}' for v in mean)} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(f"{table}\nCommand: `python bench/landmark_relation_probe.py {args.checkpoint} "
                            f"--data-root {args.data_root} --split {args.split} --out {args.out}`\n")  # fmt: skip


if __name__ == "__main__":
    main()
