"""How small the head would have to be for the token branch to add <= 5% at batch 1: the
head (``SimVG.heads``, token branch only, as inference runs it) of the checkpoint and of
smaller head configurations, each timed right after the checkpoint's own encoder, taking
turns, at batch 1 on this CPU.

    python bench/head_floor.py runs/teacher/best [--calls 200]

The smaller heads have random weights (time does not depend on the values); each is built
from the checkpoint's config with the changes its row names. Writes bench/results/head_floor.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from simvg.benchmark import save_table, synthetic_inputs
from simvg.inference import Grounder
from simvg.models import build_model

VARIANTS: dict[str, dict] = {
    "SimVG's head (no landmark relation)": {"landmark_relation": False},
    "SimVG's head, 128 wide": {"landmark_relation": False, "hidden_dim": 128, "tqg_ffn": 256},
    "SimVG's head, 128 wide, one query-generator layer": {"landmark_relation": False, "hidden_dim": 128,
                                                          "tqg_ffn": 256, "tqg_layers": 1},  # fmt: skip
    "SimVG's head, 64 wide, one query-generator layer, 2-layer box MLP": {
        "landmark_relation": False, "hidden_dim": 64, "tqg_ffn": 128, "tqg_layers": 1, "box_mlp_layers": 2},  # fmt: skip
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "head_floor.md")
    args = parser.parse_args()
    grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
    trained = grounder.model.eval()
    trained.keep_deployed_branch()
    encoder = trained.encoder
    models = {"the checkpoint's head": trained}
    for name, changes in VARIANTS.items():
        config = copy.deepcopy(grounder.config.model)
        for key, value in changes.items():
            setattr(config.head, key, value)
        model = build_model(config, grounder.meta["vocab_size"], grounder.backbone_config).eval()
        model.encoder = encoder  # the same encoder object: only the head differs
        models[name] = model
    inputs = synthetic_inputs(grounder.config, 1)
    heads: dict[str, list[float]] = {name: [] for name in models}
    encoder_times = []
    with torch.inference_mode():
        encoded = encoder(*inputs)
        for model in models.values():
            model.heads(encoded, use_decoder=False)
        for _ in range(args.calls):
            for name, model in models.items():  # turns: encoder, then this head (caches as in real use)
                start = time.perf_counter()
                encoded = encoder(*inputs)
                encoder_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                model.heads(encoded, use_decoder=False)
                heads[name].append(time.perf_counter() - start)
    encoder_ms = 1000 * statistics.median(encoder_times)
    lines = [f"threads: {torch.get_num_threads()}, batch 1, fp32, {args.calls} turns; median ms; encoder "
             f"{encoder_ms:.2f} ms, so 5% is {0.05 * encoder_ms:.2f} ms",
             "",
             "| head | parameters without the decoder branch (M) | head ms after the encoder | adds to the encoder |",
             "|---|---|---|---|"]  # fmt: skip
    for name, model in models.items():
        params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("encoder.", "decoder_branch."))) / 1e6
        head_ms = 1000 * statistics.median(heads[name])
        lines.append(f"| {name} | {params:.2f} | {head_ms:.2f} | {100 * head_ms / encoder_ms:.1f}% |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
