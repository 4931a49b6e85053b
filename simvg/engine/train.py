"""The training loop shared by ``simvg train`` and ``simvg distill``.

A :class:`TrainingTask` says what is trained (``module``: forward(batch) -> (loss, logs)),
what is saved as the checkpoint (``export_model``), and on which data. :func:`fit` runs it:
warm-up + decay, gradient clipping, mixed precision, DDP, CSV (and TensorBoard) logs,
periodic validation keeping ``OUTPUT/best``, atomic ``OUTPUT/last`` saves, and exact
resumption: a run stopped and resumed with ``--resume`` ends with the same weights as an
uninterrupted one (same seed, CPU).
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
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
)
from simvg.engine.distributed import DistributedContext
from simvg.engine.evaluate import evaluation_loader, predict_split, summarize
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
    amp_dtype = resolve_amp(train_cfg.amp, device)
    module = task.module.to(device)
    optimizer = build_optimizer(module, train_cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    output = Path(output)
    last_dir, best_dir = output / "last", output / "best"

    start_step, best_metric = 0, None
    if resume:
        source = resolve_checkpoint(last_dir)
        module_state = load_file(str(source / MODULE_STATE_FILE), device=str(device))
        module.load_state_dict(module_state, strict=True)
        state = load_training_state(source, optimizer)
        start_step, best_metric = state["step"], state.get("best_metric")
        if task.on_resume is not None:
            task.on_resume()
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
    trained = DistributedDataParallel(module) if world > 1 else module

    train_log = CsvLog(output / "train_log.csv") if context.is_main else None
    eval_log = CsvLog(output / "eval_log.csv") if context.is_main else None
    writer = None
    if context.is_main and train_cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output / "tensorboard"))

    def save_last(step: int) -> None:
        if not context.is_main:
            return
        save_checkpoint(
            last_dir, task.export_model, config, task.backbone_config, task.tokenizer,
            extra={"step": step, **task.checkpoint_extra},
            training_state={"step": step, "best_metric": best_metric},
            optimizer=optimizer,
            tensor_files={MODULE_STATE_FILE: module.state_dict()},  # in the same atomic step as the weights
        )  # fmt: skip

    def validate(step: int) -> None:
        nonlocal best_metric
        if task.val_dataset is None or not context.is_main:
            return
        loader_val = evaluation_loader(task.val_dataset, train_cfg.eval_batch_size, 0, task.tokenizer.pad_token_id)
        metrics = summarize(predict_split(task.export_model, loader_val, task.eval_branches, device, amp_dtype))
        task.export_model.train()
        primary = metrics[task.eval_branches[0]]["acc@0.5"]
        line = ", ".join(f"{b} acc@0.5 {m['acc@0.5']:.2f}" for b, m in metrics.items())
        tqdm.write(f"step {step}: val {line}")
        for branch, m in metrics.items():
            eval_log.write({"step": step, "branch": branch, "acc@0.5": m["acc@0.5"], "acc@0.75": m["acc@0.75"],
                            "miou": m["miou"], "count": m["count"]})  # fmt: skip
            if writer is not None:
                writer.add_scalar(f"val/{branch}_acc@0.5", m["acc@0.5"], step)
        if best_metric is None or primary > best_metric:
            best_metric = primary
            save_checkpoint(
                best_dir, task.export_model, config, task.backbone_config, task.tokenizer,
                extra={"step": step, "val_metrics": metrics, **task.checkpoint_extra},
            )  # fmt: skip

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
            factor = lr_factor(step, train_cfg)
            set_learning_rate(optimizer, base_lrs, factor)
            with autocast(device, amp_dtype):
                loss, logs = trained(batch)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}; lower train.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), train_cfg.grad_clip) if train_cfg.grad_clip > 0 else None
            optimizer.step()
            step += 1
            window_images += len(batch.phrases) * world
            bar.update(1)
            if context.is_main and (step % train_cfg.log_every == 0 or step == end_step):
                elapsed = max(time.monotonic() - window_start, 1e-9)
                speed = window_images / elapsed
                row = {"step": step, "lr": base_lrs[0] * factor, "loss": loss_value, **logs,
                       "grad_norm": float(grad_norm) if grad_norm is not None else 0.0, "images_per_s": speed}  # fmt: skip
                train_log.write(row)
                if writer is not None:
                    for key, value in row.items():
                        if key != "step":
                            writer.add_scalar(f"train/{key}", value, step)
                if bar.disable:
                    if progress:
                        print(f"step {step}/{total_steps} loss {loss_value:.4f} lr {base_lrs[0] * factor:.2e} "
                              f"{speed:.1f} img/s", flush=True)  # fmt: skip
                else:
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{base_lrs[0] * factor:.2e}", img_s=f"{speed:.1f}")
                window_start, window_images = time.monotonic(), 0
            if train_cfg.eval_every > 0 and step % train_cfg.eval_every == 0 and step < total_steps:
                validate(step)
                context.barrier()
            out_of_time = train_cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= train_cfg.max_minutes
            if stop.requested or out_of_time:
                reason = "interrupted" if stop.requested else "time limit"
                break
            if train_cfg.save_every > 0 and step % train_cfg.save_every == 0 and step < end_step:
                save_last(step)
                context.barrier()
    bar.close()
    if step >= total_steps:
        validate(step)
    elif reason == "finished":
        reason = "stopped early (--stop-after)"
    save_last(step)
    context.barrier()
    if writer is not None:
        writer.close()
    if context.is_main and reason != "finished":
        print(f"stopped at step {step}/{total_steps} ({reason}); continue with --resume")
    return {"step": step, "best_metric": best_metric, "reason": reason, "minutes": (time.monotonic() - started) / 60}
