"""bench/peers.py, the side-by-side of grounding models on a CPU, works end to end (tiny models)."""

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import transformers

from simvg.inference import Grounder
from simvg.models.encoders import ENCODERS

ROOT = Path(__file__).resolve().parents[1]
HF_PEERS = {"Grounding DINO-T": "GroundingDinoForObjectDetection", "OWLv2-B/16": "Owlv2ForObjectDetection",
            "Florence-2-base": "Florence2ForConditionalGeneration"}  # fmt: skip


@pytest.fixture
def bench(monkeypatch):
    # The script sets the hub's offline switches for its own process; keep them out of this one.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("peers_bench", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}  # without the header


def test_quick_run_measures_every_model_it_can_and_says_why_not_for_the_others(bench, tmp_path):
    out = tmp_path / "peers.md"
    rows = bench.main(["--quick", "--threads", "1", "--skip-onnx", "--out", str(out)])
    table = table_rows(out.read_text())
    expected = ["student", "student int8", "student, model forward only", *bench.ONNX_ROWS, "teacher", "teacher int8",
                "SimVG ViLT-B/32", "SimVG BEiT-3-B", *HF_PEERS]  # fmt: skip
    assert [row.name for row in rows] == expected
    assert list(table) == expected  # every row is in the table, measured or not
    available = {name: hasattr(transformers, cls) for name, cls in HF_PEERS.items()}
    available["SimVG BEiT-3-B"] = "beit3" in ENCODERS
    for row in rows:
        cells = table[row.name]
        if row.name in bench.ONNX_ROWS:
            assert row.call is None and cells[-1] == "not measured: --skip-onnx given"
        elif not available.get(row.name, True):
            assert row.call is None and cells[-1].startswith("not available: ")
        else:
            assert len(row.times) == 2 and all(t > 0 for t in row.times), row.name
            assert row.params > 0 and row.gflops > 0, row.name
            params, gflops, median = float(cells[1]), float(cells[2].split()[0]), float(cells[3])
            assert params == pytest.approx(row.params / 1e6, abs=0.01) and median > 0
            assert gflops == pytest.approx(row.gflops, rel=0.01)
    by_name = {row.name: row for row in rows}
    # A quantized run is the same model: same parameters and the float model's FLOPs.
    assert by_name["student int8"].params == by_name["student"].params
    assert by_name["student int8"].gflops == by_name["student"].gflops
    # The shipped student's predict call runs its forward, and its FLOPs are the forward's.
    assert by_name["student"].gflops == pytest.approx(by_name["student, model forward only"].gflops, rel=1e-6)
    assert by_name["student"].params == pytest.approx(9.97e6, rel=0.01)  # the shipped checkpoint, token path
    text = out.read_text()
    assert "CPU fp32 peak (an estimate)" in text and "% of the estimated peak" in text
    assert "Command: `python bench/peers.py --quick --threads 1 --skip-onnx --out" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_transformers_class_this_version_lacks_is_named(bench):
    with pytest.raises(bench.Unavailable, match=f"transformers {transformers.__version__} has no NoSuchGrounder"):
        bench.hf_class("NoSuchGrounder")


def test_onnx_rows_say_why_where_the_onnx_backend_is_missing(bench, tmp_path):
    if "backend" in inspect.signature(Grounder.from_pretrained).parameters:
        pytest.skip("this version has the onnxruntime backend: the rows are measured (bench/peers.py without --skip-onnx)")
    rows = bench.onnx_rows(None, "a phrase", tmp_path, 1, "")
    assert [r.name for r in rows] == list(bench.ONNX_ROWS)
    assert all(r.call is None and r.note.startswith("not available: ") and "backend" in r.note for r in rows)


def test_peak_flops_per_cycle_follow_the_vector_units(bench):
    per_cycle = bench.fp32_flops_per_cycle
    intel = {"Vendor ID": "GenuineIntel", "CPU family": "6", "Flags": "fma avx avx2 avx512f"}
    zen4 = {"Vendor ID": "AuthenticAMD", "CPU family": "25", "Flags": "fma avx avx2 avx512f"}
    zen5 = {"Vendor ID": "AuthenticAMD", "CPU family": "26", "Flags": "fma avx avx2 avx512f"}
    avx2 = {"Vendor ID": "AuthenticAMD", "CPU family": "23", "Flags": "fma avx avx2"}
    assert [per_cycle(i)[0] for i in (intel, zen4, zen5, avx2)] == [64, 32, 64, 32]
    peak = bench.cpu_peak({**zen4, "CPU max MHz": "3000.0"})
    assert peak["gflops"] == pytest.approx(peak["threads"] * 3.0 * 32)
