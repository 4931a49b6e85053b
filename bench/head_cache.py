"""Where the token branch's batch-1 time goes: the head (``SimVG.heads`` in token-only
inference: projections, query generator, folded token branch) timed right after the encoder
(whose weights have just streamed through the caches) and again at once (its own weights
still cached), with each part's parameter bytes (the encoder's without its word-embedding
table, which is looked up by row, not read whole).

    python bench/head_cache.py runs/teacher/best [--calls 300]

Writes bench/results/head_cache.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from simvg.benchmark import save_table, synthetic_inputs
from simvg.inference import Grounder


def megabytes(modules: list[torch.nn.Module], skip: tuple[torch.Tensor, ...] = ()) -> float:
    skipped = {id(t) for t in skip}
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if id(p) not in skipped) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "head_cache.md")
    args = parser.parse_args()
    grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
    model = grounder.model.eval()
    model.keep_deployed_branch()
    inputs = synthetic_inputs(grounder.config, 1)

    def head(encoded):
        return model.heads(encoded, use_decoder=False)

    hot, cold, encoder = [], [], []
    with torch.inference_mode():
        encoded = model.encoder(*inputs)
        for _ in range(3):
            head(encoded)
        for _ in range(args.calls):  # turns: encoder then head (cold), then head again (hot)
            t = time.perf_counter()
            encoded = model.encoder(*inputs)
            encoder.append(time.perf_counter() - t)
            t = time.perf_counter()
            head(encoded)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            head(encoded)
            hot.append(time.perf_counter() - t)
    head_modules = [model.text_proj, model.query_generator, model.object_proj, model.visual_proj, model.detail_proj,
                    model.token_head]  # fmt: skip
    word_table = model.encoder.embeddings.word_embeddings
    tables = tuple(word_table.parameters())  # looked up by row, not read whole
    lines = [
        f"threads: {torch.get_num_threads()}, batch 1, fp32, {args.calls} turns; median ms",
        "",
        "| what | ms | parameters (MB, fp32) |",
        "|---|---|---|",
        f"| encoder | {1000 * statistics.median(encoder):.2f} | {megabytes([model.encoder], tables):.1f} |",
        f"| head right after the encoder | {1000 * statistics.median(cold):.2f} | {megabytes(head_modules):.1f} |",
        f"| head again (hot caches) | {1000 * statistics.median(hot):.2f} | {megabytes(head_modules):.1f} |",
    ]
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
