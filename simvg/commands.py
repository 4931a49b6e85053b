"""What each ``simvg`` subcommand does (argument parsing lives in :mod:`simvg.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from simvg.cli import SPLITS, print_json


def run_synth(args: argparse.Namespace) -> int:
    from simvg.data.synthref import generate_synthref

    counts = {split: getattr(args, split) for split in SPLITS}
    name = args.name or ("synthref-g" if args.generalized else "synthref")
    path = generate_synthref(args.out, name, counts, seed=args.seed, image_size=args.image_size,
                             workers=args.workers, progress=sys.stderr.isatty(), generalized=args.generalized)  # fmt: skip
    total = sum(counts.values())
    print(f"wrote {total} images of '{name}' ({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {path}")
    return 0


def _prepare_output(output: Path, resume: bool) -> None:
    if resume:
        return
    # A TAKFL run keeps one distillation per teacher in OUTPUT/teacherJ.
    for name in ("last", "last.old", "best", *(p.relative_to(output) for p in output.glob("teacher*/last*"))):
        if (output / name).exists():
            raise ValueError(
                f"{output} already holds a run ({output / name}); pass --resume to continue it "
                "or choose another --output"
            )


def _load_run_config(args: argparse.Namespace):
    from simvg.config import load_config

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.resume and (Path(args.output) / "config.json").is_file():
        # A resumed run continues with the configuration it started with.
        from simvg.config import Config, from_dict

        saved = from_dict(Config, json.loads((Path(args.output) / "config.json").read_text()))
        if overrides:
            from simvg.config import apply_overrides

            saved = apply_overrides(saved, overrides)
        config = saved
    else:
        config = load_config(args.config, overrides)
    if config.train.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("train.tensorboard=true needs the tensorboard package: pip install 'simvg[tensorboard]' "
                             "(or leave it false: train_log.csv and eval_log.csv are always written)")  # fmt: skip
    return config


def run_train(args: argparse.Namespace) -> int:
    from simvg.engine.distributed import cleanup_distributed, setup_distributed
    from simvg.engine.stem_pretrain import pretrain_stem
    from simvg.engine.tasks import build_training_task
    from simvg.engine.train import fit

    output = Path(args.output)
    _prepare_output(output, args.resume)
    config = _load_run_config(args)
    context = setup_distributed(args.device)
    try:
        task = build_training_task(config, args.data_root)
        pretrained = None
        if config.train.stem_pretrain_steps > 0 and not args.resume and not config.train.load_from:
            # A resumed run loads its stem from its checkpoint (``last``, or ``last.old`` when
            # the run stopped while writing ``last``), so the pre-phase never runs twice; a run
            # from train.load_from starts from that checkpoint's stem.
            pretrained = pretrain_stem(task.export_model, task.train_dataset, config, context.device,
                                       task.tokenizer.pad_token_id, log=context.is_main)  # fmt: skip
        summary = fit(task, output, context, resume=args.resume, stop_after=args.stop_after, progress=not args.quiet)
    finally:
        cleanup_distributed()
    if pretrained is not None:  # the command's training time includes the stem's
        summary["stem_pretrain_minutes"] = pretrained.seconds / 60
        summary["minutes"] += pretrained.seconds / 60
    if context.is_main:
        print(json.dumps(summary))
    return 0


def run_distill(args: argparse.Namespace) -> int:
    from simvg.distillation.run import distill_command

    output = Path(args.output)
    _prepare_output(output, args.resume)
    config = _load_run_config(args)
    return distill_command(config, args)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from simvg.data.dataset import GroundingDataset
    from simvg.data.readers import load_records
    from simvg.engine.evaluate import evaluation_loader, predict_split, summarize
    from simvg.inference import Grounder

    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device, quantize="int8" if args.int8 else None)
    branches = list(grounder.branches) if args.branch == "both" else [args.branch]
    if args.branch == "decoder" and "decoder" not in grounder.branches:
        raise ValueError(f"{args.checkpoint} has no decoder branch; use --branch token")
    records = load_records(args.data_root, args.dataset, args.split, args.image_root)
    dataset = GroundingDataset(records, grounder.preprocessor, train=False, max_items=args.max_expressions)
    loader = evaluation_loader(dataset, args.batch_size, 0, grounder.tokenizer.pad_token_id)
    amp = torch.bfloat16 if grounder.device.type == "cuda" else None
    results = predict_split(grounder.model, loader, branches, grounder.device, amp, progress=sys.stderr.isatty(),
                            nms_iou=grounder.config.model.head.answer_nms, merge=grounder.config.model.head.answer_merge)
    metrics = summarize(results, args.batch_size)
    if args.save_predictions:
        path = Path(args.save_predictions)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for branch, rows in results.items():
                for row in rows:
                    f.write(json.dumps({"branch": branch, **row}) + "\n")
    report = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split, "metrics": metrics}
    if args.json:
        print_json(report)
    else:
        for branch, m in metrics.items():
            print(f"{args.dataset} {args.split} [{branch}] Acc@0.5 {m['acc@0.5']:.2f}  Acc@0.75 {m['acc@0.75']:.2f}  "
                  f"mIoU {m['miou']:.2f}  ({m['count']} expressions)")  # fmt: skip
            if "official_acc@0.5" in m:
                print(f"    SimVG's protocol (IoU in the resized frame, mean of per-batch accuracies, batch "
                      f"{args.batch_size}): Acc@0.5 {m['official_acc@0.5']:.2f}")  # fmt: skip
            if "f1_acc" in m:
                n_acc = "n/a" if m["n_acc"] is None else f"{m['n_acc']:.2f}"
                print(f"    GREC: F1-acc {m['f1_acc']:.2f}  N-acc {n_acc} ({m['no_target_count']} no-target)  "
                      f"single-target Acc@0.5 {m['acc@0.5']:.2f} ({m['count']})  of {m['grec_count']} expressions")  # fmt: skip
            for kind, t in m.get("per_type", {}).items():
                print(f"    {kind:<12} Acc@0.5 {t['acc@0.5']:.2f}  ({t['count']})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from simvg.inference import Grounder
    from simvg.visualize import draw_boxes

    if args.phrases:
        return _predict_batch(args)
    if not args.image or args.text is None:
        raise ValueError("predict needs --image and --text (or --image FOLDER --phrases FILE.jsonl)")
    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device)
    if args.all:
        return _predict_all(args, grounder)
    result = grounder.predict(args.image, args.text, branch=args.branch)
    if args.out:
        from simvg.data.images import load_image

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        image = load_image(args.image)
        draw_boxes(image.pixels, [result], scale=image.pixels.shape[1] / image.width).save(args.out)
    if args.json:
        print_json(result.to_dict())
    else:
        box = ", ".join(f"{v:.1f}" for v in result.box)
        print(f"box (x0, y0, x1, y1) = ({box})  score {result.score:.3f}" + (f"  -> {args.out}" if args.out else ""))
    return 0


def _predict_all(args: argparse.Namespace, grounder) -> int:
    """``simvg predict --all``: every box of the phrase scoring >= --threshold, possibly none."""
    from simvg.visualize import draw_boxes

    results = grounder.predict_all(args.image, args.text, threshold=args.threshold, branch=args.branch)
    if args.out:
        from simvg.data.images import load_image

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        image = load_image(args.image)
        draw_boxes(image.pixels, results, scale=image.pixels.shape[1] / image.width).save(args.out)
    if args.json:
        print_json({"text": args.text, "threshold": args.threshold, "results": [r.to_dict() for r in results]})
        return 0
    if not results:
        print(f"no match: no box scores >= {args.threshold:.2f}" + (f"  -> {args.out}" if args.out else ""))
    for result in results:
        box = ", ".join(f"{v:.1f}" for v in result.box)
        print(f"box (x0, y0, x1, y1) = ({box})  score {result.score:.3f}")
    if results and args.out:
        print(f"-> {args.out}")
    return 0


def _predict_batch(args: argparse.Namespace) -> int:
    from simvg.inference import Grounder
    from simvg.visualize import draw_boxes

    folder = Path(args.image or ".")
    if not folder.is_dir():
        raise FileNotFoundError(f"--image must be a folder of images with --phrases; not a folder: {folder}")
    path = Path(args.phrases)
    if not path.is_file():
        raise FileNotFoundError(f"phrases file not found: {path}")
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            name, text = item["image"], item["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: expected a JSON object with 'image' and 'text' ({err})") from err
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"{path}:{number}: 'image' and 'text' must be strings, got {name!r} and {text!r}")
        if not text.strip():
            raise ValueError(f"{path}:{number}: the phrase is empty: {text!r}")
        requests.append((name, text))
    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device, batch_size=args.batch_size)
    by_image: dict[str, list[str]] = {}
    for name, text in requests:
        by_image.setdefault(name, []).append(text)
    drawings = _drawing_names(list(by_image))
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    try:
        for name, texts in by_image.items():
            if args.all:
                found = grounder.predict_all(folder / name, texts, threshold=args.threshold, branch=args.branch)
                for text, kept in zip(texts, found):
                    out.write(json.dumps({"image": name, "text": text, "results": [r.to_dict() for r in kept]}) + "\n")
                results = [r for kept in found for r in kept]
            else:
                results = grounder.predict(folder / name, texts, branch=args.branch)
                for result in results:
                    out.write(json.dumps({"image": name, **result.to_dict()}) + "\n")
            if args.out:
                from simvg.data.images import load_image

                drawing = Path(args.out) / drawings[name]
                drawing.parent.mkdir(parents=True, exist_ok=True)
                image = load_image(folder / name)
                draw_boxes(image.pixels, results, scale=image.pixels.shape[1] / image.width).save(drawing)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _drawing_names(images: list[str]) -> dict[str, str]:
    """Where each image's drawing goes inside the --out folder: ``sub/a.jpg`` ->
    ``sub/a_grounded.png``; ``sub/a_jpg_grounded.png`` when another image has the same stem
    (``sub/a.png``); an absolute name or one with ``..`` by its stem alone (never outside
    the folder); a number added if two names still meet."""

    def base(name: str) -> Path:
        path = Path(name)
        return path.with_suffix("") if not path.is_absolute() and ".." not in path.parts else Path(path.stem)

    bases = [base(name) for name in images]
    counts = Counter(bases)
    names: dict[str, str] = {}
    used: set[str] = set()
    for name, stem in zip(images, bases):
        suffix = Path(name).suffix.lstrip(".")
        candidate = f"{stem}_{suffix}_grounded.png" if counts[stem] > 1 and suffix else f"{stem}_grounded.png"
        number = 2
        while candidate in used:
            candidate = f"{stem}_{number}_grounded.png"
            number += 1
        used.add(candidate)
        names[name] = candidate
    return names


def run_bench(args: argparse.Namespace) -> int:
    from simvg.benchmark import benchmark_inference, format_table
    from simvg.inference import Grounder

    grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
    if grounder.backend != "torch":
        raise ValueError(f"{args.checkpoint} is an ONNX export; simvg bench times torch models (for onnxruntime: "
                         "python bench/deploy_speed.py)")  # fmt: skip
    rows = benchmark_inference(grounder.model, grounder.config, args.batch_sizes, args.seconds, args.threads)
    if args.json:
        print_json({"checkpoint": str(args.checkpoint), "rows": rows})
    else:
        print(format_table(rows))
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from simvg.inference import Grounder

    grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
    if grounder.backend != "torch":
        raise ValueError(f"{args.checkpoint} is an ONNX export already; export from the torch checkpoint it came from")
    if args.keep_branch is not None:
        grounder.model.keep_token_branch(args.keep_branch)
    if isinstance(grounder.meta.get("teachers"), list):  # a copy to share: no absolute paths of this machine
        from simvg.engine.checkpoint import shareable_path

        grounder.meta["teachers"] = [shareable_path(str(t)) for t in grounder.meta["teachers"]]
    if args.format == "onnx":
        return _export_onnx(args, grounder)
    if args.decoder or args.int8:
        raise ValueError("--decoder and --int8 apply to --format onnx")
    grounder.save_pretrained(args.output, dtype=getattr(torch, args.dtype))
    size = (Path(args.output) / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB of {args.dtype} weights)")
    return 0


def _export_onnx(args: argparse.Namespace, grounder) -> int:
    from simvg.onnx_backend import write_onnx_checkpoint

    if args.dtype != "float32":
        raise ValueError("--dtype applies to --format safetensors: an ONNX graph is float32 (--int8 adds an int8 one)")
    grounder.model.keep_deployed_branch()  # a ONE head: export the branch that runs
    info = write_onnx_checkpoint(args.output, grounder.model, grounder.config, grounder.backbone_config,
                                 grounder.tokenizer, grounder.meta, decoder=args.decoder, int8=args.int8)  # fmt: skip
    sizes = ", ".join(f"{name} {(Path(args.output) / name).stat().st_size / 2**20:.1f} MiB" for name in info["files"])
    print(f"wrote {args.output} (ONNX opset {info['opset']}, {' + '.join(info['branches'])} branch; {sizes}); "
          f"boxes checked against torch: largest difference {info['checked_box_difference_px']:.3f} px")  # fmt: skip
    return 0


def run_check_data(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from simvg.data.check import check_data_root, format_report

    report = check_data_root(args.data_root, args.dataset, args.split, args.image_root, decode=not args.headers_only)
    if args.json:
        print_json({"data_root": str(report.data_root), "ok": report.ok, "images": report.images,
                    "splits": [asdict(s) for s in report.splits],
                    "problems": [asdict(p) for p in report.problems]})  # fmt: skip
    else:
        print(format_report(report, args.max_problems))
    return 0 if report.ok else 1


def run_convert(args: argparse.Namespace) -> int:
    from simvg.data.check import check_data_root, format_report
    from simvg.data.convert import convert_phrases

    summary = convert_phrases(args.phrases, args.images, args.out, args.name, args.coco, args.box_format, args.copy)
    counts = ", ".join(f"{split} {n} records ({summary.expressions[split]} phrases)" for split, n in summary.records.items())
    print(f"wrote dataset '{summary.name}' under {summary.out}: {counts}; {summary.images} images")
    report = check_data_root(summary.out, [summary.name])
    print(format_report(report))
    return 0 if report.ok else 1
def run_import_official(args: argparse.Namespace) -> int:
    from simvg.engine.import_official import import_official

    summary = import_official(args.source, args.output, args.tokenizer, ema=args.ema)
    model = summary["model"]
    encoder, head = model["encoder"], model["head"]
    print(f"wrote {args.output}: SimVG's {summary['weights']} as BEiT-3 {encoder['hidden_size']} x "
          f"{encoder['num_layers']} layers, patch {encoder['patch_size']}, {model['image_size']} px, "
          f"{head['num_queries']} quer{'y' if head['num_queries'] == 1 else 'ies'} (head type simvg)")  # fmt: skip
    return 0


COMMANDS = {
    "synth": run_synth,
    "train": run_train,
    "distill": run_distill,
    "eval": run_eval,
    "predict": run_predict,
    "bench": run_bench,
    "export": run_export,
    "check-data": run_check_data,
    "convert": run_convert,
    "import-official": run_import_official,
}
