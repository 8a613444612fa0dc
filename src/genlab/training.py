"""The one training loop every family plugs into: batches, metrics, snapshots, checkpoints, resume."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm import tqdm

from genlab import checkpoint
from genlab.config import FAMILIES, Config
from genlab.data import PreparedData
from genlab.errors import CheckpointError, DivergenceError
from genlab.models import Family
from genlab.models.base import weighted_means
from genlab.runtime import Rngs, generator

SNAPSHOT_BATCH = 32  # validation images shown in the per-epoch reconstruction grid
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


def resume_key(cfg: Config) -> str:
    """Digest of every param that shapes a run's trajectory; train.epochs may grow on resume."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("epochs", "resume")}
    unused = [f for f in FAMILIES if f != cfg.model.family]  # other families' sections do not matter
    for section in ("classifier", "evaluate", "sample", *unused):
        d.pop(section)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def check_resumable(state: dict[str, Any], cfg: Config, family_name: str) -> None:
    """A checkpoint continues only a run with the same params and at least as many epochs."""
    if state.get("resume_key") != resume_key(cfg) or state.get("family") != family_name:
        raise CheckpointError(
            "the checkpoint was written with other params (only train.epochs may change on resume): "
            "set train.resume=false to start afresh"
        )
    if cfg.train.epochs < state["epoch"]:
        raise CheckpointError(
            f"train.epochs = {cfg.train.epochs} but the checkpoint holds {state['epoch']} epochs: "
            f"set train.epochs >= {state['epoch']} to resume, or train.resume=false to start a new run"
        )


def batch_transform(data: PreparedData, cfg: Config) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """uint8 images -> model input in [0, 1], dynamically binarised (fresh draw per visit) if asked."""
    if cfg.data.binarize == "dynamic":
        return lambda u8, gen: torch.bernoulli(data.to_unit(u8), generator=gen)
    return lambda u8, gen: data.to_unit(u8)


def input_levels(data: PreparedData, cfg: Config) -> int:
    """How many discrete values a model input pixel can take."""
    return 2 if cfg.data.binarize == "dynamic" else data.levels


@torch.no_grad()
def evaluate_split(
    family: Family,
    images_u8: torch.Tensor,
    transform: Callable,
    epoch: int,
    gen: torch.Generator,
    batch_size: int = 1024,
) -> dict[str, float]:
    family.train(False)
    results = []
    for start in range(0, len(images_u8), batch_size):
        u8 = images_u8[start : start + batch_size].to(family.device)
        results.append((family.eval_step(transform(u8, gen), epoch, gen), len(u8)))
    return weighted_means(results)


def _report(epoch: int, epochs: int, row: dict[str, Any], seconds: float) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}"]
    parts += [f"{k.replace('_', '/', 1)} {v:.4f}" for k, v in row.items() if k != "epoch"]
    return " ".join(parts) + f" ({seconds:.1f}s)"


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of every optimiser's base learning rate at this step; cosine reaches 0 after the last."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * step / total))


def _log_epoch(tracker: Tracker, family: Family, fixed_batch: torch.Tensor, seed: int, epoch: int, logged: dict) -> None:
    """Images first, metrics last: a step's metrics in the run mean the whole epoch was logged.

    (A kill during the image upload can leave that one step's image twice; its metrics stay single.)
    """
    family.train(False)
    tracker.log_images(family.snapshot(fixed_batch, generator(family.device, seed + 2)), step=epoch)
    tracker.log_metrics(logged, step=epoch)


def scores_due(family: Family, epoch: int, epochs: int) -> bool:
    """Whether the sample scorer runs after this epoch: every `fid_every` epochs and after the last."""
    return family.fid_every > 0 and ((epoch + 1) % family.fid_every == 0 or epoch + 1 == epochs)


def fit(
    family: Family,
    data: PreparedData,
    cfg: Config,
    *,
    checkpoint_path: str | Path | None,
    tracker: Tracker,
    run_id: str | None = None,
    resume_state: dict[str, Any] | None = None,
    scorer: Callable[[Family], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Train `family` for cfg.train.epochs and return one row of metrics per epoch.

    Rows hold `epoch` and `<split>_<metric>` for split in train/val. After each epoch a checkpoint
    is written atomically, then the snapshot images and metrics go to `tracker`: a run killed in
    between is resumed after that epoch and logs it then, so every step is logged exactly once
    (logging first would log the epoch again on resume). A non-finite training metric raises
    DivergenceError before the checkpoint, so the last good one survives. `scorer` (sample-quality
    metrics, e.g. domain FID, reported as val metrics) runs when `scores_due`.
    """
    device = family.device
    rngs = Rngs(cfg.seed, device)
    history: list[dict[str, Any]] = []
    start = 0
    transform = batch_transform(data, cfg)
    train_u8 = data.train.images.to(device)
    fixed_batch = data.to_unit(data.val.images[:SNAPSHOT_BATCH].to(device))
    if resume_state is not None:
        check_resumable(resume_state, cfg, family.name)
        family.load_state_dict(resume_state["model"])
        rngs.load_state_dict(resume_state["rngs"])
        history, start = list(resume_state["history"]), resume_state["epoch"]
        if "logged" in resume_state and start - 1 not in tracker.metric_steps(EPOCH_KEY):
            _log_epoch(tracker, family, fixed_batch, cfg.seed, start - 1, resume_state["logged"])
    n, bs, epochs = len(train_u8), cfg.train.batch_size, cfg.train.epochs
    show_bar = sys.stderr.isatty()
    # The schedule is a function of the step alone and `initial_lr` (PyTorch's name for it) travels in the
    # optimiser's state, so a resumed run follows the schedule exactly.
    steps_per_epoch = math.ceil(n / bs)
    groups = [group for opt in family.optimizers.values() for group in opt.param_groups]
    for group in groups:
        group.setdefault("initial_lr", group["lr"])

    for epoch in range(start, epochs):
        began = time.perf_counter()
        family.train(True)
        order = torch.randperm(n, generator=rngs.order).to(device)
        batches = []
        steps = range(0, n, bs)
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not show_bar)
        for k, i in enumerate(bar):
            factor = lr_factor(cfg.train.lr_schedule, epoch * steps_per_epoch + k, epochs * steps_per_epoch)
            for group in groups:
                group["lr"] = group["initial_lr"] * factor
            u8 = train_u8[order[i : i + bs]]
            batches.append((family.train_step(transform(u8, rngs.noise), epoch, rngs.noise), len(u8)))
        train_metrics = weighted_means(batches)
        bad = [k for k, v in train_metrics.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(
                f"training diverged at epoch {epoch + 1}: non-finite {', '.join(bad)}; "
                f"the last good checkpoint ({checkpoint_path}) is kept: resume from it with the same params, "
                "or lower train.lr and start afresh (train.resume=false)"
            )
        val_metrics = evaluate_split(family, data.val.images, transform, epoch, rngs.noise)
        seconds = time.perf_counter() - began
        if scorer is not None and scores_due(family, epoch, epochs):
            family.train(False)
            val_metrics.update(scorer(family))

        row = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train_metrics.items()})
        row.update({f"val_{k}": v for k, v in val_metrics.items()})
        history.append(row)
        print(_report(epoch, epochs, row, seconds), flush=True)

        logged = {f"train/{k}": v for k, v in train_metrics.items()}
        logged.update({f"val/{k}": v for k, v in val_metrics.items()})
        logged[EPOCH_KEY] = seconds
        if checkpoint_path is not None:
            checkpoint.save(
                checkpoint_path,
                {
                    "family": family.name,
                    "resume_key": resume_key(cfg),
                    "epoch": epoch + 1,
                    "model": family.state_dict(),
                    "rngs": rngs.state_dict(),
                    "run_id": run_id,
                    "history": history,
                    "logged": logged,  # what a resume logs if the kill came before this epoch was logged
                },
            )
        _log_epoch(tracker, family, fixed_batch, cfg.seed, epoch, logged)
    return history
