"""Where can a landmark pointer read the landmark from? With a trained checkpoint frozen, fresh
pointers are trained on SynthRef's relational phrases to attend to the landmark's cell (cross-
entropy), each with its query read from a different input, over keys projected from the
branch's visual tokens; reported: how often each one's peak is the landmark's cell on val.

    python bench/landmark_pointer_probe.py CHECKPOINT --data-root DATA [--train-phrases 6000]
        [--out bench/results/landmark_pointer_probe.md]

Queries: the object token (the "token" pointer's input), the encoder's fused text tokens
pooled by a learned attention or read by the "words" pointer's GRU, and the phrase's input
embeddings read by that GRU (simvg.models.heads.landmark_relation.WordsLandmarkPointer).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from simvg.benchmark import save_table
from simvg.data.dataset import Collator, GroundingDataset, Preprocessor
from simvg.data.readers import load_records
from simvg.engine.checkpoint import load_checkpoint
from simvg.models.criterion import point_cells
from simvg.models.heads.landmark_relation import WordsLandmarkPointer


def relational_features(model, tokenizer, config, data_root: str, split: str, limit: int) -> dict:
    """Frozen features of the first ``limit`` relational phrases of ``split``."""
    records = load_records(data_root, "synthref", split)
    dataset = GroundingDataset(records, Preprocessor(tokenizer, config.model.image_size, config.model.max_text_length),
                               train=False, landmarks=True)  # fmt: skip
    dataset.items = [(i, j) for i, j in dataset.items if records[i].extra["programs"][j]["op"] == "relate"][:limit]
    encoded = {}
    hook = model.encoder.register_forward_hook(lambda module, args, output: encoded.update(out=output))
    rows: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in DataLoader(dataset, batch_size=64, collate_fn=Collator(tokenizer.pad_token_id)):
        out = model(batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=False)
        enc = encoded["out"]
        pad = config.model.max_text_length - enc.text_mask.shape[1]
        rows["token"].append(out["object_token"])
        rows["visual"].append(model.visual_proj(enc.visual_tokens))
        rows["fused_text"].append(nn.functional.pad(model.text_proj(enc.text_tokens), (0, 0, 0, pad)))
        rows["embeddings"].append(nn.functional.pad(enc.text_embeddings, (0, 0, 0, pad)))
        rows["text_mask"].append(nn.functional.pad(enc.text_mask, (0, pad)))
        rows["landmark"].append(point_cells(torch.tensor([m["landmark"] for m in batch.meta]), out["grid"]))
    hook.remove()
    features = {k: torch.cat(v) for k, v in rows.items()}
    features["relation"] = [records[i].extra["programs"][j]["arg"] for i, j in dataset.items]
    return features


class TokenQuery(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, f: dict, idx: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,bnd->bn", self.query(f["token"][idx]), self.key(f["visual"][idx])) / 16


class FusedTextQuery(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.select, self.query, self.key = nn.Linear(dim, 1), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, f: dict, idx: torch.Tensor) -> torch.Tensor:
        text, mask = f["fused_text"][idx], f["text_mask"][idx]
        weights = self.select(text)[..., 0].masked_fill(~mask, -1e9).softmax(dim=-1)
        query = self.query(torch.einsum("bl,bld->bd", weights, text))
        return torch.einsum("bd,bnd->bn", query, self.key(f["visual"][idx])) / 16


class WordsQuery(nn.Module):
    """The words pointer, reading ``source``: the input embeddings, or (a control: does the GRU
    alone do it?) the fused text tokens."""

    def __init__(self, width: int, dim: int, source: str = "embeddings"):
        super().__init__()
        self.pointer, self.source = WordsLandmarkPointer(width, dim), source

    def forward(self, f: dict, idx: torch.Tensor) -> torch.Tensor:
        return self.pointer((f[self.source][idx], f["text_mask"][idx]), f["visual"][idx], 1 / 16)


def train_and_score(probe: nn.Module, train: dict, val: dict, epochs: int) -> torch.Tensor:
    """Trains ``probe`` on the landmark cells of ``train``; (V,) hits on ``val``."""
    optimiser = torch.optim.Adam(probe.parameters(), lr=1e-3)
    n = len(train["landmark"])
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            loss = nn.functional.cross_entropy(probe(train, idx), train["landmark"][idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        everything = torch.arange(len(val["landmark"]))
        return (probe(val, everything).argmax(dim=-1) == val["landmark"]).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-phrases", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "landmark_pointer_probe.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, config, _ = load_checkpoint(args.checkpoint)
    with torch.no_grad():
        train = relational_features(model, tokenizer, config, args.data_root, "train", args.train_phrases)
        val = relational_features(model, tokenizer, config, args.data_root, "val", 10**9)
    dim, width = train["token"].shape[-1], train["embeddings"].shape[-1]
    probes = {"the object token": TokenQuery(dim), "the fused text tokens, attention-pooled": FusedTextQuery(dim),
              "the fused text tokens, read by the words pointer's GRU": WordsQuery(dim, dim, "fused_text"),
              "the input embeddings, read by the words pointer's GRU": WordsQuery(width, dim)}  # fmt: skip
    relations = sorted(set(val["relation"]))
    lines = [f"Fresh landmark pointers on `{args.checkpoint}`'s frozen features: trained on {len(train['landmark'])} "
             f"relational train phrases ({args.epochs} epochs), peak on the landmark's cell for val's "
             f"{len(val['landmark'])}", "",
             "| query read from | all | " + " | ".join(relations) + " |",
             "|---|---|" + "---|" * len(relations)]  # fmt: skip
    for name, probe in probes.items():
        hits = train_and_score(probe, train, val, args.epochs)
        by_relation = [hits[[r == rel for r in val["relation"]]].mean() for rel in relations]
        lines.append(f"| {name} | {100 * hits.mean():.1f}% | " + " | ".join(f"{100 * v:.1f}%" for v in by_relation) + " |")
        print(lines[-1], flush=True)
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
