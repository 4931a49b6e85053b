"""The ``simvg`` command: synth | train | eval | predict | distill | bench | export | check-data | convert |
import-official."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

SPLITS = ("train", "val", "testA", "testB")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the SynthRef benchmark in the SimVG layout")
    p.add_argument("--out", required=True, help="data root to write (annotations/ and images/)")
    p.add_argument("--name", help="dataset name (default: synthref, or synthref-g with --generalized)")
    for split, default in zip(SPLITS, (8000, 1000, 500, 500)):
        p.add_argument(f"--{split}", type=int, default=default, help=f"images in {split} (default {default})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=1, help="processes used to render (default 1)")
    p.add_argument("--generalized", action="store_true",
                   help="SynthRef-G: also phrases that denote several objects or none (docs/synthref-g.md)")  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a SimVG model from a YAML recipe")
    p.add_argument("config", help="YAML recipe, e.g. configs/synthref_hybrid.yaml")
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", required=True, help="run directory (checkpoints last/ and best/, logs)")
    p.add_argument("--max-steps", type=non_negative_int, help="override train.max_steps (the schedule length)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last exactly where it stopped")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many steps of this invocation (resumable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a SimVG teacher into a cheaper student")
    p.add_argument("config", help="YAML recipe, e.g. configs/distill_synthref.yaml")
    p.add_argument("--teacher", required=True, action="append",
                   help="teacher checkpoint directory (repeat for several teachers: TAKFL)")  # fmt: skip
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--max-steps", type=non_negative_int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=positive_int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--quiet", action="store_true")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="box accuracy of a checkpoint on a dataset split")
    p.add_argument("checkpoint")
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--branch", choices=["token", "decoder", "both"], default="both")
    p.add_argument("--image-root", help="images folder (default DATA_ROOT/images)")
    p.add_argument("--save-predictions", metavar="FILE.jsonl", help="one JSON line per expression")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-expressions", type=positive_int, help="evaluate an evenly spaced subset")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--int8", action="store_true", help="run the encoder's linear layers in int8 (CPU; simvg.models.quantize)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="ground a phrase in an image (or a batch from a JSONL file)")
    p.add_argument("checkpoint")
    p.add_argument("--image", help="an image file, or a folder with --phrases")
    p.add_argument("--text", help="the phrase")
    p.add_argument("--phrases", metavar="FILE.jsonl",
                   help='batch form: lines {"image": "NAME relative to --image", "text": "..."}')  # fmt: skip
    p.add_argument("--out", help="single: PNG with the box drawn; batch: folder for drawn images")
    p.add_argument("--output", metavar="FILE.jsonl", help="batch: write results here (default: stdout)")
    p.add_argument("--json", action="store_true", help="single: print JSON with box and score")
    p.add_argument("--branch", choices=["token", "decoder"], default="token")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--all", action="store_true", help="every box of each phrase scoring >= --threshold (possibly none)")
    p.add_argument("--threshold", type=probability, default=0.7, help="with --all: the lowest score kept (default 0.7)")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="inference speed of a checkpoint on this machine")
    p.add_argument("checkpoint")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 32])
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a checkpoint for inference (weights only, optionally float16, or ONNX)")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="onnx: an ONNX graph (model.onnx) for onnxruntime instead of torch weights (docs/deployment.md)")  # fmt: skip
    p.add_argument("--decoder", action="store_true", help="onnx: also export the decoder branch (default: token branch only)")
    p.add_argument("--int8", action="store_true", help="onnx: also write model.int8.onnx (int8 weights, onnxruntime's quantization)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="storage dtype of the weights (float16 halves the file; loading casts back)")  # fmt: skip
    p.add_argument("--keep-branch", type=int, default=None, metavar="N",
                   help="keep only token branch N of a ONE (multi-branch) head; drop the others and the gate")  # fmt: skip


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="check a data root: annotations, splits, every image and box")
    p.add_argument("data_root")
    p.add_argument("--dataset", action="append", help="check only this dataset (repeatable; default: all)")
    p.add_argument("--split", action="append", help="check only this split (repeatable; default: all)")
    p.add_argument("--image-root", help="images folder (default DATA_ROOT/images)")
    p.add_argument("--headers-only", action="store_true",
                   help="read image headers (and PNG checksums) instead of decoding every image")  # fmt: skip
    p.add_argument("--max-problems", type=positive_int, default=50, help="problems listed (default 50)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="your images, boxes and phrases (JSON lines) -> the SimVG data layout")
    p.add_argument("--phrases", required=True, metavar="FILE.jsonl",
                   help='lines {"image": NAME, "box": [x, y, w, h], "phrase": "...", "split": "train"} '
                        'or {"ann_id": ID, "phrase": "...", "split": "val"} with --coco')  # fmt: skip
    p.add_argument("--images", required=True, help="folder holding the images (NAME is relative to it)")
    p.add_argument("--coco", metavar="instances.json", help="COCO annotations that ann_id refers to")
    p.add_argument("--out", required=True, help="data root to write (annotations/NAME, images/NAME)")
    p.add_argument("--name", required=True, help="dataset name (the --dataset / data.dataset to train on)")
    p.add_argument("--box-format", choices=["xywh", "xyxy"], default="xywh",
                   help="'box' as COCO [x, y, w, h] (default) or corners [x0, y0, x1, y1], in pixels")  # fmt: skip
    p.add_argument("--copy", action="store_true", help="copy the images used (default: link the image folder)")
def _add_import_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-official", help="turn a SimVG release (.pth) into a checkpoint directory")
    p.add_argument("source", help="SimVG's released torch file (e.g. det_best.pth)")
    p.add_argument("output", help="checkpoint directory to write")
    p.add_argument("--tokenizer", required=True, metavar="PATH.spm", help="BEiT-3's sentencepiece model (beit3.spm)")
    p.add_argument("--ema", action="store_true", help="take the file's EMA weights (ema_state_dict)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simvg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_train, _add_eval, _add_predict, _add_distill, _add_bench, _add_export,
                _add_check_data, _add_convert, _add_import_official):  # fmt: skip
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from simvg.commands import COMMANDS

    # Warnings meant for the user (a truncated phrase) read as one line, not as a source location.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"simvg {args.command}: warning: {message}\n"
    try:
        if getattr(args, "device", None) == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda: this machine has no usable CUDA GPU (torch.cuda.is_available() "
                                 "is false); use --device cpu")  # fmt: skip
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        # Errors about the user's input (config, data, checkpoint, image, phrase) are
        # reported as one clear line; anything else keeps its traceback.
        if os.environ.get("SIMVG_DEBUG"):
            raise
        print(f"simvg {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def user_message(err: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker process, whose message
    is the worker's whole traceback, only the original error's own message."""
    text = str(err)
    if "DataLoader worker process" not in text or "Original Traceback" not in text:
        return text
    lines = text.splitlines()
    kind = type(err)
    prefixes = (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: ")
    starts = [i for i, line in enumerate(lines) if line.startswith(prefixes)]
    if not starts:
        return lines[-1]
    first, *rest = lines[starts[-1] :]
    return "\n".join([first.split(": ", 1)[1], *rest]).strip()


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=None, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
