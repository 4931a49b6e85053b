import importlib.util
from pathlib import Path

import pytest
import torch

from simvg.benchmark import take_turns

ROOT = Path(__file__).resolve().parents[1]


def test_calls_take_turns_one_call_at_a_time():
    order = []
    times = take_turns({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, seconds=0.0, min_calls=3)
    assert order == ["a", "b"] * 4  # a warm-up call each, then three rounds
    assert {key: len(t) for key, t in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for t in times["a"] + times["b"])


@pytest.mark.parametrize("model", ["vilt-b32", "beit3-base"])
def test_gpu_throughput_bench_counts_flops_per_step_and_mfu(tmp_path, model):
    # The GPU bench runs here on the CPU with a tiny transformer, so that a lent GPU's time is
    # never spent on a broken script.
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "bench" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.md"
    tiny = ["model.encoder.pretrained=null", "model.encoder.hidden_size=32", "model.encoder.num_layers=1",
            "model.encoder.num_heads=2", "model.encoder.intermediate_size=64", "model.image_size=64"]  # fmt: skip
    if model == "beit3-base":
        tiny.append("model.encoder.preset=null")  # BEiT-3 (patch 32, 20 tokens) at tiny sizes
    bench.main(["--model", model, "--set", *tiny, "--batch-sizes", "1", "2", "--steps", "1", "--warmup", "0",
                "--device", "cpu", "--peak-tflops", "0.001", "--out", str(out)])  # fmt: skip
    assert f"Model: {model} ({'beit3' if model == 'beit3-base' else 'vilt'} encoder" in out.read_text()
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")]  # fmt: skip
    assert len(rows) == 2
    flops = [float(row[3]) * 1e9 for row in rows]
    assert flops[0] > 0 and 1.8 < flops[1] / flops[0] < 2.2  # the work of a step grows with the batch
    mfu = [float(row[5].strip().rstrip("%")) for row in rows]
    assert all(m > 0 for m in mfu)
    assert bench.peak_tflops(torch.device("cpu"), None) is None  # no MFU on a CPU unless a peak is given
    assert bench.peak_for_name("NVIDIA H200") == bench.peak_for_name("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_for_name("NVIDIA H100 PCIe") == 756.0 and bench.peak_for_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_for_name("NVIDIA L4") == 121.0 and bench.peak_for_name("NVIDIA L40S") == 362.1
    assert bench.peak_for_name("NVIDIA GeForce GTX 1080") is None
    assert bench.peak_for_name("NVIDIA L40") == 181.0 and bench.peak_for_name("NVIDIA A10G") is None


def test_score_ranking_bench_counts_right_wrong_and_no_target_answers():
    spec = importlib.util.spec_from_file_location("score_ranking", ROOT / "bench" / "score_ranking.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    box, far = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]

    def row(scores, boxes, gt):
        return {"pred_scores": scores, "pred_boxes": boxes, "gt_boxes": gt}

    rows = [
        row([0.9], [box], [box]),  # right, 0.9
        row([0.8, 0.95], [far, box], [box]),  # right: the answer is the top-scoring box
        row([0.7], [far], [box]),  # wrong box, 0.7
        row([0.3], [box], []),  # no target, 0.3
        row([0.92], [box], []),  # no target, 0.92
    ]
    report = bench.ranking_report(rows, num_bins=5)
    assert (report["count"], report["right"], report["wrong_box"], report["no_target"]) == (5, 2, 1, 2)
    # Right scores 0.9, 0.95 against 0.7, 0.3, 0.92: 5 of 6 pairs ordered.
    assert report["auroc"] == 5 / 6
    assert report["auroc_vs_wrong_box"] == 1.0 and report["auroc_vs_no_target"] == 3 / 4
    assert sum(b["count"] for b in report["bins"]) == 5
    # GREC at 0.7: the first is right, the second keeps a false box too, the third a wrong one;
    # the first no-target phrase keeps nothing (right), the second a box (wrong).
    assert bench.correct_by_kind(rows) == {"single": (100 / 3, 3), "multi": (0.0, 0), "none": (50.0, 2)}
