"""DVC stage `train`: fit the model family on the prepared data, tracked in MLflow.

python stages/train.py [--name NAME] [--family FAMILY]   # see genlab.pipeline.stage.stage_args
"""

import dataclasses
import os
import signal
import subprocess
import sys

import pandas as pd

from genlab.config import params_guard
from genlab.config.experiment import config_from_dict, stage_view
from genlab.config.params_file import parse_params
from genlab.core import atomic, machine, paths
from genlab.core.errors import GenlabError
from genlab.core.runtime import seed_everything, use_threads
from genlab.data import load_prepared
from genlab.data.checksums import md5_file
from genlab.evaluation import upstream
from genlab.evaluation.model_file import MODEL_MD5_TAG, save_model
from genlab.evaluation.scoring import fid_monitor
from genlab.models import DataSpec, build_family
from genlab.pipeline.stage import run_stage, stage_args, stage_config
from genlab.tracking import mlflow_model, store
from genlab.training import distributed, resume
from genlab.training.loop import NullTracker, check_trainable, fit, resume_key
from genlab.training.sources import input_levels, source_for


def write_curves(where: paths.ModelPaths, table: pd.DataFrame, curves: dict[str, str]) -> None:
    """<curves>/<metric>.csv with columns epoch, train, val: the DVC plots, whatever the family."""
    where.curves.mkdir(parents=True, exist_ok=True)
    for name in curves:
        cols = {split: f"{split}_{name}" for split in ("train", "val") if f"{split}_{name}" in table}
        if not cols:  # e.g. domain_fid with gan.eval_every = 0
            continue
        curve = table[["epoch", *cols.values()]].rename(columns={v: k for k, v in cols.items()})
        with atomic.atomic_path(where.curves / f"{name}.csv") as tmp:
            curve.dropna(subset=list(cols), how="all").to_csv(tmp, index=False)


def write_outputs(where, family, history, view, data_md5, upstream_md5, fingerprint) -> None:
    """The model file and the metrics; train.json holds the metrics of the epoch whose weights the model keeps:
    the last, or the selected one. No run id: these are DVC outputs, and a random id in them would change
    dvc.lock on every retrain (evaluate and sample find the run by the model file's md5: evaluation.model_file)."""
    save_model(where, family, view, data_md5, upstream_md5)
    kept = next((row for row in history if row.get("selected")), history[-1])
    summary = {"epochs": len(history)}
    if "selected" in kept:
        summary["selected_epoch"] = kept["epoch"]
    for split in ("train", "val"):
        summary[split] = {k[len(split) + 1 :]: v for k, v in kept.items() if k.startswith(split + "_")}
    atomic.write_json(where.train_metrics, summary)
    atomic.write_json(where.machine, fingerprint)
    table = pd.DataFrame(history)
    with atomic.atomic_path(where.history) as tmp:
        table.to_csv(tmp, index=False)
    write_curves(where, table, family.curves)


def registered_model_name(cfg, where: paths.ModelPaths) -> str:
    """The model registry name of a run's model: one per family and dataset (and model name), each run a version."""
    model = "" if where.name == paths.DEFAULT_MODEL else f"-{where.name}"
    return f"genlab-{cfg.model.family}-{cfg.data.name}{model}"


def committed_view(cfg) -> dict | None:
    """The train stage's view of the committed params.yaml (git HEAD) for this run's family, if there is one."""
    proc = subprocess.run(["git", "show", f"HEAD:{paths.PARAMS}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None  # no commit yet (or not a git repository): nothing to compare
    try:
        committed = config_from_dict(parse_params(proc.stdout))  # read as DVC reads it
    except GenlabError:
        return None  # a commit whose params this code no longer reads
    return stage_view(dataclasses.replace(committed, model=cfg.model), "train")


def run() -> None:
    args = stage_args(__doc__.splitlines()[0])
    cfg = stage_config(args.family)
    use_threads(cfg.threads)
    if cfg.train.processes > 1 and not distributed.launched():
        # This process becomes torchrun, which starts the workers (each runs this script) and, on a
        # signal or a failed worker, stops them all: nothing is left running behind DVC's back.
        command = distributed.launch_command(cfg.train.processes, sys.argv)
        print(f"train.processes = {cfg.train.processes}: {' '.join(command[1:])}", flush=True)
        os.execv(sys.executable, command)
    # torchrun stops the other workers with SIGTERM when one fails: end through `active()`, which marks the run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    world, device = distributed.join(cfg.device, cfg.train.processes)
    try:
        train(args, cfg, world, device)
    finally:
        distributed.leave()


def train(args, cfg, world: distributed.World, device) -> None:
    where = paths.model_paths(args.name)
    seed_everything(cfg.seed, "model_init")
    data = load_prepared(paths.PREPARED_DIR)
    spec = DataSpec(data.image_shape, input_levels(data, cfg.data.binarize))
    family = build_family(cfg.model.family, cfg.family, spec, device)
    distributed.sync_batchnorm(family.modules.values(), device, world)
    view = stage_view(cfg, "train")
    key = resume_key(view)
    upstream_md5 = upstream.attach(family, where, device, data.checksum, cfg)

    scorer = None
    if family.fid_every:
        classifier = family.upstreams[family.config_class.SCORED_BY]
        scorer = fid_monitor(classifier, data.to_unit(data.val.images), family.fid_samples, device, cfg.seed)
    source = source_for(family, data, cfg.data.binarize, upstream_md5)
    # Every check before the first side effect (a new MLflow run, the old checkpoint deleted by resume.started).
    check_trainable(cfg.train, source, device)
    if not world.main:  # the other workers train and leave tracking and every file to rank 0
        state = world.broadcast(None)
        fit(
            family,
            source,
            cfg.train,
            cfg.seed,
            key=key,
            checkpoint_path=None,
            tracker=NullTracker(),
            resume_state=state,
            scorer=scorer,
            world=world,
        )
        return

    inputs = resume.inputs_digest(key, data.checksum, upstream_md5)
    fingerprint = machine.fingerprint(device)
    done = resume.finished_state(where, inputs) if os.environ.get("DVC_STAGE") and world.size == 1 else None
    if done is not None:  # DVC reran train after a kill cut it off between train's end and dvc.lock
        history = fit(
            family, source, cfg.train, cfg.seed, key=key, checkpoint_path=None, tracker=NullTracker(), resume_state=done
        )
        write_outputs(where, family, history, view, data.checksum, upstream_md5, fingerprint)
        print(
            f"MLflow run {done['run_id']} already finished training from these params, data and code: its outputs "
            f"are restored from {where.checkpoint}, no new run (delete that file to train again)"
        )
        return
    state = world.broadcast(resume.resumable_state(where, cfg.train, key, family.name))
    if state is not None:
        tracker = resume.reopen(state, cfg.train)
        tracker.set_tags({"genlab.resumed_on": machine.describe(fingerprint)})
    else:
        tags = store.run_tags(cfg, data.checksum, device, fingerprint, where)
        tags.update({f"genlab.upstream.{name}_md5": md5 for name, md5 in upstream_md5.items()})
        tags.update(upstream.run_links(family, where))
        tags.update({"genlab.world_size": str(world.size), "genlab.backend": world.backend or "none"})
        left_out = sum(
            len(data.manifest.get(k, ())) for k in ("skipped_files", "skipped_folders", "empty_class_folders")
        )
        if left_out:  # data.skip_unreadable: the manifest lists them
            tags["genlab.data_left_out"] = str(left_out)
        name = store.run_name(cfg, tags, view, committed_view(cfg))
        tracker = store.MlflowTracker.create(store.flatten(view), tags, run_name=name)
        resume.started(where, tracker.run_id)
        tracker.log_text(store.pip_freeze(), "environment/requirements.txt")
    print(f"MLflow run {tracker.run_id} in {store.display_uri(tracker.uri)}")

    with tracker.active():
        history = fit(
            family,
            source,
            cfg.train,
            cfg.seed,
            key=key,
            checkpoint_path=where.checkpoint,
            tracker=tracker,
            run_id=tracker.run_id,
            resume_state=state,
            scorer=scorer,
            world=world,
        )
        params_guard.check()  # params.yaml still holds what validate read: no outputs from another's -S
        write_outputs(where, family, history, view, data.checksum, upstream_md5, fingerprint)
        tags = {MODEL_MD5_TAG: md5_file(where.model)}  # how evaluate and sample find this run
        selected = [row["epoch"] for row in history if row.get("selected")]
        if selected:
            tags["genlab.selected_epoch"] = selected[0]
        tracker.set_tags(tags)
        tracker.log_artifact(where.model, "model_file")  # "model" is the MLflow model below
        example = mlflow_model.example_input(family, data.to_unit(data.test.images[:2]))
        tracker.log_model(family, example, registered_model_name(cfg, where))
        tracker.log_artifact(where.history, "metrics")
    resume.finished(where, tracker.run_id, inputs)


if __name__ == "__main__":
    run_stage(run)
