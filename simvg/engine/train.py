"""The training loop shared by ``simvg train`` and ``simvg distill``.

A :class:`TrainingTask` says what is trained (``module``: forward(batch) -> (loss, logs)),
what is saved as the checkpoint (``export_model``), and on which data. :func:`fit` runs it:
warm-up + decay, gradient clipping, mixed precision, DDP, CSV (and TensorBoard) logs,
periodic validation keeping ``OUTPUT/best``, atomic ``OUTPUT/last`` saves, and exact
resumption: a run stopped and resumed with ``--resume`` ends with the same weights as an
uninterrupted one (same seed, CPU).

With ``train.ema`` an exponential moving average of the weights is kept (simvg.engine.ema):
validation runs it, ``best/`` keeps it, and every saved ``model.safetensors`` holds it (the
checkpoint's config.json says ``"weights": "ema"``); the weights as trained are in ``last/``'s
``training_module.safetensors`` for ``--resume``. ``train.load_from`` starts a run from
another checkpoint's model weights (not its optimizer or step).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from simvg.config import Config, to_dict
from simvg.data.dataset import Batch, Collator, GroundingDataset, StepSampler
from simvg.engine.checkpoint import (
    MODULE_STATE_FILE,
    load_model_weights,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
)
from simvg.engine.distributed import DistributedContext
from simvg.engine.ema import ModelEma
from simvg.engine.evaluate import evaluation_loader, predict_split, selection_score, summarize
from simvg.engine.optim import autocast, build_optimizer, lr_factor, resolve_amp, set_learning_rate


@dataclass
class TrainingTask:
    config: Config
    module: nn.Module  # forward(batch: Batch) -> (loss tensor, logs dict of floats)
    export_model: nn.Module  # the SimVG saved as the checkpoint (part of `module`)
    backbone_config: dict
    tokenizer: object
    train_dataset: GroundingDataset
    val_dataset: GroundingDataset | None
    eval_branches: tuple[str, ...] = ("token", "decoder")
    checkpoint_extra: dict = field(default_factory=dict)
    # Called after a resume has restored the weights, e.g. to re-freeze a teacher.
    on_resume: Callable[[], None] | None = None
    # DDP must look for parameters that get no gradient (a branch whose losses are all off).
    find_unused_parameters: bool = False


class _StopRequest:
    """Turns SIGINT/SIGTERM into a clean stop at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no signal handling
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class CsvLog:
    """Appends rows to a CSV file; the columns are fixed by the first row written."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open() as f:
                self.fields = next(csv.reader(f), None)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log rows from steps the resumed run will redo."""
    if not path.is_file():
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


@dataclass
class _Run:
    """What the phases of :func:`fit` share."""

    task: TrainingTask
    output: Path
    context: DistributedContext
    module: nn.Module
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    amp_dtype: torch.dtype | None
    ema: ModelEma | None = None
    best_metric: float | None = None
    train_log: CsvLog | None = None
    eval_log: CsvLog | None = None
    writer: object | None = None  # a TensorBoard SummaryWriter

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved as model.safetensors: the EMA's when on."""
        return self.ema.model if self.ema is not None else self.task.export_model

    @property
    def weights(self) -> str:
        """What a saved model.safetensors holds: "ema" (averaged) or "trained" weights."""
        return "ema" if self.ema is not None else "trained"


def _restore(run: _Run, source: Path) -> int:
    """Resume from the checkpoint ``source`` (OUTPUT/last): the training module (weights as
    trained), the EMA (its model.safetensors: the average if the run kept one, else the
    trained weights it then starts from), optimizer, RNG; returns the step to resume at."""
    module_state = load_file(str(source / MODULE_STATE_FILE), device=str(run.context.device))
    run.module.load_state_dict(module_state, strict=True)
    if run.ema is not None:
        load_model_weights(run.ema.model, source)
    state = load_training_state(source, run.optimizer)
    run.best_metric = state.get("best_metric")
    if run.task.on_resume is not None:
        run.task.on_resume()
    return state["step"]


def _train_step(run: _Run, trained: nn.Module, batch: Batch, step: int) -> tuple[float, dict, float | None, float]:
    """One optimizer step at ``step``; returns (loss, the module's logs, gradient norm before
    clipping or None, learning-rate factor)."""
    cfg = run.task.config.train
    factor = lr_factor(step, cfg)
    set_learning_rate(run.optimizer, run.base_lrs, factor)
    with autocast(run.context.device, run.amp_dtype):
        loss, logs = trained(batch)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"loss is {loss_value} at step {step}; lower train.lr or check the data")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.module.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.task.export_model, step)
    return loss_value, logs, (float(grad_norm) if grad_norm is not None else None), factor


def _log_row(run: _Run, step: int, row: dict, bar: tqdm, progress: bool) -> None:
    """Write a training log row (CSV, TensorBoard) and show it (bar or plain line)."""
    run.train_log.write(row)
    if run.writer is not None:
        for key, value in row.items():
            if key != "step":
                run.writer.add_scalar(f"train/{key}", value, step)
    if not bar.disable:
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", img_s=f"{row['images_per_s']:.1f}")
    elif progress:
        print(f"step {step}/{run.task.config.train.max_steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
              f"{row['images_per_s']:.1f} img/s", flush=True)  # fmt: skip


def _save_last(run: _Run, step: int) -> None:
    if not run.context.is_main:
        return
    task = run.task
    save_checkpoint(
        run.output / "last", run.eval_model, task.config, task.backbone_config, task.tokenizer,
        extra={"step": step, "weights": run.weights, **task.checkpoint_extra},
        training_state={"step": step, "best_metric": run.best_metric},
        optimizer=run.optimizer,
        tensor_files={MODULE_STATE_FILE: run.module.state_dict()},  # in the same atomic step as the weights
    )  # fmt: skip


def _validate(run: _Run, step: int) -> None:
    """Validate the evaluated weights (the EMA's when on), log the figures, and keep them in
    OUTPUT/best if ``train.best_metric`` improved."""
    task = run.task
    if task.val_dataset is None or not run.context.is_main:
        return
    cfg = task.config.train
    loader = evaluation_loader(task.val_dataset, cfg.eval_batch_size, 0, task.tokenizer.pad_token_id)
    results = predict_split(run.eval_model, loader, task.eval_branches, run.context.device, run.amp_dtype,
                             nms_iou=task.config.model.head.answer_nms, merge=task.config.model.head.answer_merge)
    metrics = summarize(results, cfg.eval_batch_size)
    if run.ema is None:
        task.export_model.train()
    score = selection_score(metrics, cfg.best_metric)
    line = ", ".join(f"{b} acc@0.5 {m['acc@0.5']:.2f}" + (f" f1_acc {m['f1_acc']:.2f}" if "f1_acc" in m else "")
                     for b, m in metrics.items())  # fmt: skip
    tqdm.write(f"step {step}: val {line}" + (" (EMA weights)" if run.ema is not None else ""))
    for branch, m in metrics.items():
        row = {"step": step, "branch": branch, **{k: m.get(k) for k in EVAL_LOG_FIELDS}}
        run.eval_log.write({k: ("" if v is None else v) for k, v in row.items()})
        if run.writer is not None:
            run.writer.add_scalar(f"val/{branch}_acc@0.5", m["acc@0.5"], step)
    if run.best_metric is None or score > run.best_metric:
        run.best_metric = score
        save_checkpoint(
            run.output / "best", run.eval_model, task.config, task.backbone_config, task.tokenizer,
            extra={"step": step, "val_metrics": metrics, "weights": run.weights,
                   "best_metric": {"rule": cfg.best_metric, "value": score}, **task.checkpoint_extra},
        )  # fmt: skip


# Columns of eval_log.csv after step and branch (f1_acc, n_acc: generalized splits only).
EVAL_LOG_FIELDS = ("acc@0.5", "acc@0.75", "miou", "official_acc@0.5", "f1_acc", "n_acc", "count")


def _check_best_metric(task: TrainingTask) -> None:
    rule = task.config.train.best_metric
    if rule in ("token", "decoder") and rule not in task.eval_branches:
        raise ValueError(f"train.best_metric is '{rule}' but this run evaluates only {', '.join(task.eval_branches)}; "
                         f"choose first, mean or one of those")  # fmt: skip


def fit(
    task: TrainingTask,
    output: Path,
    context: DistributedContext,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``task`` into ``output``; returns a summary (steps run, best metric, stop reason)."""
    config = task.config
    train_cfg = config.train
    device = context.device
    _check_best_metric(task)
    module = task.module.to(device)
    optimizer = build_optimizer(module, train_cfg)
    run = _Run(task, Path(output), context, module, optimizer, [group["lr"] for group in optimizer.param_groups],
               resolve_amp(train_cfg.amp, device))  # fmt: skip
    output = run.output

    # Start: resume, or fresh weights (optionally those of train.load_from)
    if not resume and train_cfg.load_from:
        source = load_model_weights(task.export_model, train_cfg.load_from, train_cfg.load_from_fresh)
        if context.is_main:
            print(f"starting from the weights of {source}")
    if train_cfg.ema and context.is_main:  # only the main process validates and saves
        run.ema = ModelEma(task.export_model, train_cfg.ema)
    start_step = 0
    if resume:
        source = resolve_checkpoint(output / "last")
        start_step = _restore(run, source)
        if context.is_main:
            _truncate_log(output / "train_log.csv", start_step)
            _truncate_log(output / "eval_log.csv", start_step)
            print(f"resuming from {source} at step {start_step}")
    elif context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps(to_dict(config), indent=2))

    world = context.world_size
    if train_cfg.batch_size % world:
        raise ValueError(f"train.batch_size {train_cfg.batch_size} is not divisible by the {world} processes")
    sampler = StepSampler(
        len(task.train_dataset), train_cfg.batch_size // world, train_cfg.max_steps, seed=train_cfg.seed,
        start_step=start_step, rank=context.rank, world_size=world,
    )  # fmt: skip
    workers = config.data.num_workers
    loader = DataLoader(
        task.train_dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=Collator(task.tokenizer.pad_token_id),
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by the loader
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    trained = (DistributedDataParallel(module, find_unused_parameters=task.find_unused_parameters)
               if world > 1 else module)  # fmt: skip
    if context.is_main:
        run.train_log, run.eval_log = CsvLog(output / "train_log.csv"), CsvLog(output / "eval_log.csv")
        if train_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            run.writer = SummaryWriter(str(output / "tensorboard"))

    module.train()
    total_steps = train_cfg.max_steps
    end_step = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    started = time.monotonic()
    window_start, window_images = time.monotonic(), 0
    step = start_step
    reason = "finished"
    # A bar on a terminal; plain log lines (every log_every steps) otherwise.
    bar = tqdm(total=total_steps, initial=start_step, disable=None if progress and context.is_main else True,
               dynamic_ncols=True)  # fmt: skip
    with _StopRequest() as stop:
        batches = iter(loader)
        while step < end_step:
            batch: Batch = next(batches).to(device)
            # Forward, backward, clip, step (and average the weights)
            loss_value, logs, grad_norm, factor = _train_step(run, trained, batch, step)
            step += 1
            window_images += len(batch.phrases) * world
            bar.update(1)
            # Log
            if context.is_main and (step % train_cfg.log_every == 0 or step == end_step):
                speed = window_images / max(time.monotonic() - window_start, 1e-9)
                row = {"step": step, "lr": run.base_lrs[0] * factor, "loss": loss_value, **logs,
                       "grad_norm": grad_norm if grad_norm is not None else 0.0, "images_per_s": speed}  # fmt: skip
                _log_row(run, step, row, bar, progress)
                window_start, window_images = time.monotonic(), 0
            # Validate
            if train_cfg.eval_every > 0 and step % train_cfg.eval_every == 0 and step < total_steps:
                _validate(run, step)
                context.barrier()
            # Stop (signal, time limit) or save
            out_of_time = train_cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= train_cfg.max_minutes
            if stop.requested or out_of_time:
                reason = "interrupted" if stop.requested else "time limit"
                break
            if train_cfg.save_every > 0 and step % train_cfg.save_every == 0 and step < end_step:
                _save_last(run, step)
                context.barrier()
    bar.close()
    if step >= total_steps:
        _validate(run, step)
    elif reason == "finished":
        reason = "stopped early (--stop-after)"
    _save_last(run, step)
    context.barrier()
    if run.writer is not None:
        run.writer.close()
    if context.is_main and reason != "finished":
        print(f"stopped at step {step}/{total_steps} ({reason}); continue with --resume")
    return {"step": step, "best_metric": run.best_metric, "reason": reason, "minutes": (time.monotonic() - started) / 60}
