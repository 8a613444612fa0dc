"""The train stage's steps (stages/train.py runs them in order; each is callable on its own):

setup = set_up(cfg, name, device, world)          # family + upstreams + batches + resume key: nothing written
history = restore_finished(setup, fingerprint)    # a DVC rerun after a kill between training's end and dvc.lock
tracker, state = open_run(setup, fingerprint)     # the checkpoint's MLflow run reopened, or a new tagged run
history = setup.fit(tracker, state)               # genlab.training.loop, checkpointing and logging to the run
publish(setup, tracker, history, fingerprint)     # model file, record + metrics, then the run's model and tags
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from genlab.config import params_guard
from genlab.config.experiment import Config, config_from_dict, stage_view
from genlab.config.params_file import parse_params
from genlab.core import atomic, machine, paths
from genlab.core.errors import GenlabError
from genlab.core.runtime import seed_everything
from genlab.data import PreparedData, load_prepared
from genlab.data.checksums import md5_file
from genlab.evaluation import upstream
from genlab.evaluation.model_file import MODEL_MD5_TAG, save_model
from genlab.evaluation.scoring import fid_monitor
from genlab.models import DataSpec, Family, build_family
from genlab.pipeline.history import save_record, write_table
from genlab.tracking import mlflow_model, store
from genlab.training import distributed, resume
from genlab.training.distributed import SINGLE, World
from genlab.training.loop import NullTracker, check_trainable, fit, resume_key
from genlab.training.sources import Source, input_levels, source_for


@dataclass(frozen=True)
class Setup:
    """Everything a training run starts from, checked, before its first side effect."""

    cfg: Config
    where: paths.ModelPaths
    world: World
    device: torch.device
    data: PreparedData
    family: Family
    source: Source
    view: dict[str, Any]  # the train stage's params: the MLflow run's params and the model file's
    upstream_md5: dict[str, str]
    scorer: Callable[[Family], dict[str, float]] | None

    @property
    def key(self) -> str:
        """The resume key of the params: a checkpoint continues only a run with the same one."""
        return resume_key(self.view)

    @property
    def inputs(self) -> str:
        """What makes a finished run's outputs valid: params, data and upstream models (training.resume)."""
        return resume.inputs_digest(self.key, self.data.checksum, self.upstream_md5)

    def fit(self, tracker=None, state=None) -> list[dict[str, Any]]:
        """Run the loop from `state` (a checkpoint) or afresh; with a `tracker`, rank 0 also writes the
        checkpoint and logs to it."""
        main = self.world.main and tracker is not None
        return fit(
            self.family,
            self.source,
            self.cfg.train,
            self.cfg.seed,
            key=self.key,
            checkpoint_path=self.where.checkpoint if main else None,
            tracker=tracker if main else NullTracker(),
            run_id=tracker.run_id if main else None,
            resume_state=state,
            scorer=self.scorer,
            world=self.world,
        )


def set_up(cfg: Config, name: str, device: torch.device, world: World = SINGLE) -> Setup:
    """Build the family (weights from the seed), attach its upstream models, find its batches; refuse what
    `fit` would refuse. Writes nothing."""
    where = paths.model_paths(name)
    seed_everything(cfg.seed, "model_init")
    data = load_prepared(paths.PREPARED_DIR)
    spec = DataSpec(data.image_shape, input_levels(data, cfg.data.binarize))
    family = build_family(cfg.model.family, cfg.family, spec, device)
    distributed.sync_batchnorm(family.modules.values(), device, world)
    view = stage_view(cfg, "train")
    upstream_md5 = upstream.attach(family, where, device, data.checksum, cfg)
    scorer = None
    if family.fid_every:
        classifier = family.upstreams[family.config_class.SCORED_BY]
        reference = data.to_unit(data.val.images[: family.fid_samples])  # not the whole split: it may be large
        scorer = fid_monitor(classifier, reference, family.fid_samples, device, cfg.seed)
    source = source_for(family, data, cfg.data.binarize, upstream_md5)
    check_trainable(cfg.train, source, device)
    return Setup(cfg, where, world, device, data, family, source, view, upstream_md5, scorer)


def restore_finished(setup: Setup, fingerprint: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Under DVC, a finished checkpoint of these very inputs means a kill came between training's end and
    dvc.lock: its outputs are rewritten from it (no new MLflow run) and its history returned; else None."""
    if not os.environ.get("DVC_STAGE") or setup.world.size > 1:
        return None
    done = resume.finished_state(setup.where, setup.inputs)
    if done is None:
        return None
    history = setup.fit(state=done)
    write_outputs(setup, history, fingerprint)
    print(
        f"MLflow run {done['run_id']} already finished training from these params, data and code: its outputs "
        f"are restored from {setup.where.checkpoint}, no new run (delete that file to train again)"
    )
    return history


def open_run(setup: Setup, fingerprint: dict[str, Any]) -> tuple[store.MlflowTracker, dict[str, Any] | None]:
    """The MLflow run to train in, with the checkpoint to resume (train.resume), or a new run tagged with the
    commit, data, machine and upstream models (the old checkpoint then goes: training.resume.started)."""
    cfg, data, world = setup.cfg, setup.data, setup.world
    state = world.broadcast(resume.resumable_state(setup.where, cfg.train, setup.key, setup.family.name))
    if state is not None:
        tracker = resume.reopen(state, cfg.train)
        tracker.set_tags({"genlab.resumed_on": machine.describe(fingerprint)})
        return tracker, state
    tags = store.run_tags(cfg, data.checksum, setup.device, fingerprint, setup.where)
    tags.update({f"genlab.upstream.{name}_md5": md5 for name, md5 in setup.upstream_md5.items()})
    tags.update(upstream.run_links(setup.family, setup.where))
    tags.update({"genlab.world_size": str(world.size), "genlab.backend": world.backend or "none"})
    left_out = sum(len(data.manifest.get(k, ())) for k in ("skipped_files", "skipped_folders", "empty_class_folders"))
    if left_out:  # data.skip_unreadable: the manifest lists them
        tags["genlab.data_left_out"] = str(left_out)
    name = store.run_name(cfg, tags, setup.view, committed_view(cfg))
    tracker = store.MlflowTracker.create(store.flatten(setup.view), tags, run_name=name)
    resume.started(setup.where, tracker.run_id)
    tracker.log_text(store.pip_freeze(), "environment/requirements.txt")
    return tracker, None


def publish(setup: Setup, tracker: store.MlflowTracker, history: list[dict[str, Any]], fingerprint) -> None:
    """After training, inside the run: the stage's outputs (only on the params validate read), then the tags
    evaluate and sample find the run by, the model file, the MLflow model (registered) and the history."""
    params_guard.check()  # params.yaml still holds what validate read: no outputs from another's -S
    write_outputs(setup, history, fingerprint)
    where = setup.where
    tags = {MODEL_MD5_TAG: md5_file(where.model)}
    selected = [row["epoch"] for row in history if row.get("selected")]
    if selected:
        tags["genlab.selected_epoch"] = selected[0]
    tracker.set_tags(tags)
    tracker.log_artifact(where.model, "model_file")  # "model" is the MLflow model below
    example = mlflow_model.example_input(setup.family, setup.data.to_unit(setup.data.test.images[:2]))
    tracker.log_model(setup.family, example, registered_model_name(setup.cfg, where))
    with tempfile.TemporaryDirectory() as tmp:  # the history stage writes the workspace's copy after this stage
        table = Path(tmp) / where.history.name
        write_table(pd.DataFrame(history), table)
        tracker.log_artifact(table, "metrics")


def write_outputs(setup: Setup, history: list[dict[str, Any]], fingerprint: dict[str, Any]) -> None:
    """The model file, the training record (the history stage draws the per-epoch files from it) and the metrics;
    train.json holds the metrics of the epoch whose weights the model keeps: the last, or the selected one. No run
    id: these are DVC outputs, and a random id in them would change dvc.lock on every retrain (evaluate and sample
    find the run by the model file's md5: evaluation.model_file)."""
    where = setup.where
    save_model(where, setup.family, setup.view, setup.data.checksum, setup.upstream_md5)
    save_record(where, history, setup.family.curves)
    kept = next((row for row in history if row.get("selected")), history[-1])
    summary = {"epochs": len(history)}
    if "selected" in kept:
        summary["selected_epoch"] = kept["epoch"]
    for split in ("train", "val"):
        summary[split] = {k[len(split) + 1 :]: v for k, v in kept.items() if k.startswith(split + "_")}
    atomic.write_json(where.train_metrics, summary)
    atomic.write_json(where.machine, fingerprint)


def registered_model_name(cfg: Config, where: paths.ModelPaths) -> str:
    """The model registry name of a run's model: one per family and dataset (and model name), each run a version."""
    model = "" if where.name == paths.DEFAULT_MODEL else f"-{where.name}"
    return f"genlab-{cfg.model.family}-{cfg.data.name}{model}"


def committed_view(cfg: Config) -> dict | None:
    """The train stage's view of the committed params.yaml (git HEAD) for this run's family, if there is one."""
    proc = subprocess.run(["git", "show", f"HEAD:{paths.PARAMS}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None  # no commit yet (or not a git repository): nothing to compare
    try:
        committed = config_from_dict(parse_params(proc.stdout))  # read as DVC reads it
    except GenlabError:
        return None  # a commit whose params this code no longer reads
    return stage_view(dataclasses.replace(committed, model=cfg.model), "train")
