"""The one training loop every family plugs into: batches, optimisation, metrics, snapshots, checkpoints, resume.

The family says what to minimise (`Family.losses`, or its `train_step` hook); this loop owns the rest of
an update: Adam per declared optimiser, the learning-rate schedule, gradient clipping and EMA updates.
Epochs count from 1 everywhere: the console, MLflow steps, train_history.csv and the DVC plots.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from genlab.config.sections import TrainConfig
from genlab.core import checkpoint
from genlab.core.errors import CheckpointError, ConfigError, DivergenceError
from genlab.core.progress import Pace, bar
from genlab.core.runtime import Rngs, deterministic, stream
from genlab.data.prepared import Rows
from genlab.models import Family
from genlab.models.ema import EMA
from genlab.training.distributed import SINGLE, World
from genlab.training.sources import Source

SNAPSHOT_BATCH = 32  # validation items shown in the per-epoch reconstruction grid
# Snapshot images are logged at most about this many times a run: each costs a sampler run (12 % of a DDPM
# epoch on digits), and an image slider over 20 steps shows the progress as well as one over 100.
SNAPSHOTS = 20
EPOCH_KEY = "time/epoch_seconds"  # logged with every epoch's metrics: its steps are the epochs logged


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_images(self, images: dict[str, torch.Tensor], step: int) -> None: ...
    def metric_steps(self, key: str) -> set[int]: ...


class NullTracker:
    """For benchmarks and tests that do not need MLflow."""

    def log_metrics(self, metrics, step=None):
        pass

    def log_images(self, images, step):
        pass

    def metric_steps(self, key):
        return set()


def resume_key(train_view: dict[str, Any]) -> str:
    """Digest of the params that shape a run's trajectory (the train stage's view); train.epochs may grow."""
    d = dict(train_view)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("epochs", "resume")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def check_resumable(state: dict[str, Any], key: str, epochs: int, family_name: str) -> None:
    """A checkpoint continues only a run with the same params and at least as many epochs."""
    if state.get("resume_key") != key or state.get("family") != family_name:
        raise CheckpointError(
            "the checkpoint was written with other params (only train.epochs may change on resume): "
            "set train.resume=false to start afresh"
        )
    if epochs < state["epoch"]:
        raise CheckpointError(
            f"train.epochs = {epochs} but the checkpoint holds {state['epoch']} epochs: "
            f"set train.epochs >= {state['epoch']} to resume, or train.resume=false to start a new run"
        )


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of an optimiser's base learning rate at step `step` of its `total`; cosine reaches 0 after
    the last (steps outside 0..total, where the optimiser does not step, are clamped)."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(max(step, 0), total) / total))


class Optimisation:
    """The loop's half of every update: the family's optimisers (Adam), schedule, gradient averaging over
    workers, clipping, fp16 loss scaling, EMA."""

    def __init__(self, family: Family, train: TrainConfig, world: World = SINGLE):
        self.family = family
        self.clip = train.grad_clip
        self.world = world
        self.share = 1.0  # this worker's share of the current global batch (gradients are weighted by it)
        # The fused kernel updates all parameters in one pass: ~1.5x faster MNIST epochs on CPU.
        self.optimizers = {
            name: torch.optim.Adam(spec.params, lr=spec.lr, betas=spec.betas, fused=True)
            for name, spec in family.optimizers().items()
        }
        # The tensors each optimiser steps (load_state_dict keeps them): gradient averaging and clipping read them.
        self.params = {
            name: [p for g in opt.param_groups for p in g["params"]] for name, opt in self.optimizers.items()
        }
        # `initial_lr` (PyTorch's name) travels in the optimiser's state, so a resumed run follows the schedule.
        for group in self._groups():
            group.setdefault("initial_lr", group["lr"])
        # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range and needs none.
        self.scalers = (
            {name: torch.amp.GradScaler(family.device.type) for name in self.optimizers}
            if train.precision == "fp16"
            else {}
        )

    def _groups(self) -> list[dict]:
        # Read afresh each time: Optimizer.load_state_dict replaces the group dicts.
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr_factors(self, factors: dict[str, float]) -> None:
        """Each optimiser's base learning rate times its factor (by optimiser name)."""
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factors[name]

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backpropagate `loss` and step optimiser `name` (then the EMA that follows its network)."""
        opt, scaler, params = self.optimizers[name], self.scalers.get(name), self.params[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.family.device.type, enabled=False):  # autocast is for forward passes only
            (scaler.scale(loss) if scaler else loss).backward()
        self.world.average_gradients(params, self.share)
        if scaler:
            scaler.unscale_(opt)  # clipping reads true gradient norms
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        if scaler:
            scaler.step(opt)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            opt.step()
        self.family.after_step(name)
        if name in self.family.ema_of:
            ema, source = self.family.ema_of[name]
            ema.update(source)

    def state_dict(self) -> dict[str, Any]:
        state = {name: opt.state_dict() for name, opt in self.optimizers.items()}
        state.update({f"{name}/scaler": scaler.state_dict() for name, scaler in self.scalers.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state[f"{name}/scaler"])


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision = fp16 needs a CUDA device (float16 training with a GradScaler), "
            f"but this run is on {device}: use bf16 (or fp32) on CPU"
        )


def check_trainable(train: TrainConfig, source: Source, device: torch.device) -> None:
    """What `fit` would refuse, checked by the train stage before its first side effect (a new MLflow run,
    the previous checkpoint deleted)."""
    check_precision(train.precision, device)
    n = len(source.train)
    if train.batch_size > n:  # each batch would be the whole split: almost surely a typo
        raise ConfigError(
            f"train.batch_size = {train.batch_size} exceeds the {n} training examples: set it to at most {n}"
        )


def precision_context(precision: str, device: torch.device):
    """bf16/fp16: autocast of the forward passes (weights, optimiser state and backward stay float32); fp32: off."""
    return torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision in AUTOCAST)


@torch.no_grad()
def evaluate_split(
    family: Family,
    stored: torch.Tensor,
    to_input: Callable,
    epoch: int,
    seed: int,
    world: World = SINGLE,
    batch_size: int = 1024,
    precision: str = "fp32",
    rows: Rows | None = None,
) -> dict[str, float]:
    """Per-example means of `family.eval_step` over a split. Batch b draws its noise from its own stream
    and the workers take turns over the batches, so any number of workers gives the one-process numbers."""
    family.train(False)
    results = world.sums()
    for b, start in enumerate(range(0, len(stored), batch_size)):
        if b % world.size != world.rank:
            continue
        gen = stream(seed, f"val_noise/{epoch}/{b}", family.device)
        end = min(start + batch_size, len(stored))
        batch = stored[start:end] if rows is None else rows.gather(stored, torch.arange(start, end))
        batch = batch.to(family.device)
        with precision_context(precision, family.device):
            metrics = family.eval_step(to_input(batch, gen), epoch, gen)
        results.add(metrics, len(batch))
    return world.reduce_means(results)


def _report(epoch: int, epochs: int, row: dict[str, Any], note: str, label: str = "epoch") -> str:
    parts = [f"{label} {epoch}/{epochs}"]
    parts += [f"{k.replace('_', '/', 1)} {v:.4f}" for k, v in row.items() if k != "epoch"]
    return " ".join(parts) + f" {note}"


def snapshot_due(epoch: int, epochs: int) -> bool:
    """Whether epoch `epoch` of a run of `epochs` logs snapshot images: every epoch of a run of up to SNAPSHOTS
    epochs; in a longer one every ceil(epochs / SNAPSHOTS)-th epoch, and the last."""
    return epoch % math.ceil(epochs / SNAPSHOTS) == 0 or epoch == epochs


def _log_epoch(
    tracker: Tracker, family: Family, fixed_batch: torch.Tensor, seed: int, epoch: int, epochs: int, logged: dict
) -> None:
    """Images first (when due), metrics last: a step's metrics in the run mean the whole epoch was logged.

    (A kill during the image upload can leave that one step's image twice; its metrics stay single.)
    """
    if snapshot_due(epoch, epochs):
        _log_snapshot(tracker, family, fixed_batch, seed, epoch)
    tracker.log_metrics(logged, step=epoch)


def _log_snapshot(tracker: Tracker, family: Family, fixed_batch: torch.Tensor, seed: int, step: int) -> None:
    """The family's snapshot images of the fixed batch (the same noise at every step) as MLflow step `step`."""
    family.train(False)
    tracker.log_images(family.snapshot(fixed_batch, stream(seed, "snapshot", family.device)), step=step)


def compile_networks(module: nn.Module) -> None:
    """torch.compile, in place (state_dict keys stay the eager ones), each network a family calls: a container
    (a ModuleDict of networks, or an EMA of one) is never called itself, so its members are compiled."""
    inner = module.module if isinstance(module, EMA) else module
    if isinstance(inner, (nn.ModuleDict, nn.ModuleList)):
        for child in inner.children():
            compile_networks(child)
    else:
        module.compile()


def scores_due(family: Family, epoch: int, epochs: int) -> bool:
    """Whether the sample scorer runs after this epoch (1-based): every `fid_every` epochs, after the last, and
    after every epoch the family's `selection()` may keep (it compares them by the score)."""
    if family.fid_every <= 0:
        return False
    rule = family.selection()
    return epoch % family.fid_every == 0 or epoch == epochs or (rule is not None and epoch >= rule[1])


class Trainer:
    """One training run in three steps a reader can hold apart, each callable on its own (tests do):

        trainer = Trainer(family, source, train, seed, key=..., tracker=...)  # set-up, or resume a checkpoint
        for epoch in trainer.epochs_left():
            row, logged = trainer.epoch(epoch)      # the epoch: its batches, the validation split, the scorer
            trainer.record(epoch, row, logged)      # checkpoint, then images and metrics to the tracker
        history = trainer.finish()                  # the selected epoch's weights, if the family selects one

    `fit` runs exactly that; its docstring says what each step guarantees.
    """

    def __init__(
        self,
        family: Family,
        source: Source,
        train: TrainConfig,
        seed: int,
        *,
        key: str,
        tracker: Tracker,
        checkpoint_path: str | Path | None = None,
        run_id: str | None = None,
        resume_state: dict[str, Any] | None = None,
        scorer: Callable[[Family], dict[str, float]] | None = None,
        world: World = SINGLE,
        label: str = "epoch",
        order: str = "batch_order",
    ):
        device = family.device
        check_trainable(train, source, device)
        if family.channels_last:
            for module in family.modules.values():
                module.to(memory_format=torch.channels_last)  # batches follow in _train_batches
        self.family, self.source, self.train, self.seed, self.key = family, source, train, seed, key
        self.tracker, self.checkpoint_path, self.run_id = tracker, checkpoint_path, run_id
        self.scorer, self.world, self.label = scorer, world, label
        if world.size > 1 and resume_state is None:
            family.load_state_dict(world.broadcast(family.state_dict()))  # one starting point, whatever each CPU drew
        if train.compile:
            deterministic(compiled=True)
            for module in family.modules.values():
                compile_networks(module)
        self.rngs = Rngs(seed, device, world.rank, order)
        self.optimisation = Optimisation(family, train, world)
        self.history: list[dict[str, Any]] = []
        self.done, self.best = 0, None
        first = torch.arange(min(SNAPSHOT_BATCH, len(source.val)))
        self.fixed_batch = source.to_input(
            source.rows.gather(source.val, first).to(device), stream(seed, "snapshot_batch", device)
        )
        if resume_state is not None:
            check_resumable(resume_state, key, train.epochs, family.name)
            family.load_state_dict(resume_state["model"])
            self.optimisation.load_state_dict(resume_state["optimizers"])
            self.rngs.load_state_dict(
                resume_state["worker_rngs"][world.rank] if world.size > 1 else resume_state["rngs"]
            )
            self.history, self.done, self.best = (
                list(resume_state["history"]),
                resume_state["epoch"],
                resume_state["best"],
            )
            if world.main and "logged" in resume_state and self.done not in tracker.metric_steps(EPOCH_KEY):
                _log_epoch(tracker, family, self.fixed_batch, seed, self.done, train.epochs, resume_state["logged"])
        elif world.main:
            # Step 0 is the untrained model: MLflow's image cards open at step 0, so without it they open blank.
            _log_snapshot(tracker, family, self.fixed_batch, seed, 0)
        self.pace = Pace(train.epochs, self.done)
        self.steps_per_epoch = math.ceil(len(source.train) / train.batch_size)
        # Each optimiser's schedule spans the epochs it steps in (FlowMo's 1B optimiser: the 1B epochs only).
        self.windows = {name: family.schedule_window(name, train.epochs) for name in self.optimisation.optimizers}

    def epochs_left(self) -> range:
        return range(self.done + 1, self.train.epochs + 1)

    def _lr_factors(self, step: int) -> dict[str, float]:
        """Each optimiser's learning-rate factor at global step `step` (0-based) of the run."""
        spe, schedule = self.steps_per_epoch, self.train.lr_schedule
        return {
            name: lr_factor(schedule, step - (first - 1) * spe, (last - first + 1) * spe)
            for name, (first, last) in self.windows.items()
        }

    def _train_batches(self, epoch: int) -> dict[str, float]:
        """One pass over the training split in this epoch's order: the per-image means of the train metrics."""
        family, train, world, device = self.family, self.train, self.world, self.family.device
        n, bs, epochs = len(self.source.train), train.batch_size, train.epochs
        family.train(True)
        order = torch.randperm(n, generator=self.rngs.order)  # on the host, where the (mapped) images are
        batches = world.sums()
        for k, i in enumerate(bar(range(0, n, bs), f"{self.label} {epoch}/{epochs}", show=world.main)):
            batch = order[i : i + bs]
            if len(batch) < world.size:  # a last partial batch too small to give every worker an image
                continue
            mine = world.shard(batch)
            self.optimisation.share = len(mine) / len(batch)
            self.optimisation.set_lr_factors(self._lr_factors((epoch - 1) * self.steps_per_epoch + k))
            stored = self.source.rows.gather(self.source.train, mine)
            x = self.source.to_input(stored.to(device), self.rngs.noise)
            if family.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision_context(train.precision, device):
                metrics = family.train_step(x, epoch, self.rngs.noise, self.optimisation.update)
            batches.add(metrics, len(stored))
        return world.reduce_means(batches)

    def epoch(self, epoch: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Train one epoch, then measure the validation split (and run the scorer when due). Returns the
        history row and the metrics to log; writes nothing. A non-finite training metric raises DivergenceError."""
        family, world = self.family, self.world
        began = time.perf_counter()
        train_metrics = self._train_batches(epoch)
        bad = [k for k, v in train_metrics.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(
                f"training diverged at epoch {epoch}: non-finite {', '.join(bad)}; "
                f"the last good checkpoint ({self.checkpoint_path}) is kept: resume from it with the same params, "
                "or lower the learning rate and start afresh (train.resume=false)"
            )
        world.average_buffers(family.modules.values())
        val_metrics = evaluate_split(
            family,
            self.source.val,
            self.source.to_input,
            epoch,
            self.seed,
            world,
            precision=self.train.precision,
            rows=self.source.rows,
        )
        seconds = time.perf_counter() - began
        if self.scorer is not None and scores_due(family, epoch, self.train.epochs):
            family.train(False)
            val_metrics.update(world.broadcast(self.scorer(family) if world.main else None))
        row = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train_metrics.items()})
        row.update({f"val_{k}": v for k, v in val_metrics.items()})
        logged = {f"train/{k}": v for k, v in train_metrics.items()}
        logged.update({f"val/{k}": v for k, v in val_metrics.items()})
        logged[EPOCH_KEY] = seconds
        return row, logged

    def record(self, epoch: int, row: dict[str, Any], logged: dict[str, float]) -> None:
        """Keep the epoch: the history and the best epoch so far, then (rank 0) the console line, the checkpoint
        written atomically, and last the tracker's images and metrics."""
        self.history.append(row)
        self.best = _select(self.family, row, self.best)
        self.done = epoch
        worker_rngs = self.world.gather(self.rngs.state_dict())
        if not self.world.main:
            return
        note = self.pace.note(epoch, logged[EPOCH_KEY])
        print(_report(epoch, self.train.epochs, row, note, self.label), flush=True)
        if self.checkpoint_path is not None:
            checkpoint.save(
                self.checkpoint_path,
                {
                    "family": self.family.name,
                    "resume_key": self.key,
                    "epoch": epoch,
                    "model": self.family.state_dict(),
                    "optimizers": self.optimisation.state_dict(),
                    "rngs": worker_rngs[0],
                    "worker_rngs": worker_rngs,
                    "run_id": self.run_id,
                    "history": self.history,
                    "best": self.best,
                    "logged": logged,  # what a resume logs if the kill came before this epoch was logged
                },
            )
        _log_epoch(self.tracker, self.family, self.fixed_batch, self.seed, epoch, self.train.epochs, logged)

    def finish(self) -> list[dict[str, Any]]:
        """The history; a family with a selection rule gets its best epoch's weights back, marked `selected`."""
        if self.best is not None:
            self.family.load_state_dict(self.best["model"])
            for row in self.history:
                row["selected"] = int(row["epoch"] == self.best["epoch"])
            if self.world.main:
                rule = self.family.selection()[0]
                print(f"kept the weights of epoch {self.best['epoch']}: lowest {rule} ({self.best['value']:.4f})")
        return self.history


def fit(family: Family, source: Source, train: TrainConfig, seed: int, **kwargs: Any) -> list[dict[str, Any]]:
    """Train `family` for train.epochs and return one row of metrics per epoch (`epoch` from 1); the keyword
    arguments are `Trainer`'s (`key` and `tracker` required).

    Rows hold `epoch` and `<split>_<metric>` for split in train/val. A fresh run logs the snapshot images
    of the untrained model at step 0. After each epoch a checkpoint is written atomically, then the snapshot
    images (when `snapshot_due`) and the metrics go to `tracker`: a run killed in
    between is resumed after that epoch and logs it then, so every step is logged exactly once
    (logging first would log the epoch again on resume). A non-finite training metric raises
    DivergenceError before the checkpoint, so the last good one survives. `scorer` (sample-quality
    metrics, e.g. domain FID, reported as val metrics) runs when `scores_due`. `key` is the
    `resume_key` of the run's params: a checkpoint resumes only a run with the same key. A family with a
    `selection()` rule ends with the weights of its best epoch, marked by `selected` = 1 in the rows.
    Under torchrun every worker calls fit with its `world` (genlab.training.distributed says what they share);
    only rank 0 logs, prints and writes the checkpoint, whose `worker_rngs` let every worker resume.
    `label` names the epochs in the console (e.g. "classifier epoch"); `order` names the batch-order stream.
    """
    trainer = Trainer(family, source, train, seed, **kwargs)
    for epoch in trainer.epochs_left():
        trainer.record(epoch, *trainer.epoch(epoch))
    return trainer.finish()


def _select(family: Family, row: dict[str, Any], best: dict[str, Any] | None) -> dict[str, Any] | None:
    """The best epoch so far under `family.selection()`, with a copy of its weights."""
    rule = family.selection()
    if rule is None or row["epoch"] < rule[1] or rule[0] not in row:
        return best
    if best is None or row[rule[0]] < best["value"]:
        return {"epoch": row["epoch"], "value": row[rule[0]], "model": copy.deepcopy(family.state_dict())}
    return best
