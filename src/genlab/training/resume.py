"""Which MLflow run a training checkpoint continues, and closing the runs a kill left RUNNING.

`checkpoints/run.json` names the unfinished run from the moment it is created until it finishes,
and a checkpoint resumes only that run. Whatever else a start finds (a run killed before its first
checkpoint, a checkpoint of another or of a finished run, an unfinished run while train.resume is
false) is closed or deleted before a new run starts, so no run inherits another's epochs and none
stays RUNNING for ever.

A finished run keeps its final checkpoint, with a digest of everything it was trained from: a kill
after training ended but before DVC wrote dvc.lock makes DVC run train again, and that rerun restores
the outputs from the checkpoint instead of training a duplicate run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from genlab.config.sections import TrainConfig
from genlab.core import atomic, checkpoint
from genlab.core.errors import CheckpointError, TrackingError
from genlab.core.paths import ModelPaths
from genlab.tracking import store
from genlab.training.loop import check_resumable

RESUMABLE = ("RUNNING", "KILLED", "FAILED")  # killed -9, Ctrl-C, diverged: all continue from the checkpoint


def _unfinished_run(where: ModelPaths) -> str | None:
    try:
        marker = json.loads(where.training_run.read_text())
    except (OSError, ValueError):
        return None
    return None if marker.get("finished") else marker.get("run_id")


def _status(run_id: str) -> str | None:
    """The run's MLflow status; None when the store does not hold it (e.g. another tracking URI). A store that
    does not answer is an error, not "no such run": that would start a new run and drop the checkpoint."""
    tracker = store.attach(run_id)
    try:
        with store.store_errors(tracker.uri):
            return tracker.client.get_run(run_id).info.status
    except TrackingError as exc:
        if getattr(exc.__cause__, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def resumable_state(where: ModelPaths, train: TrainConfig, key: str, family_name: str) -> dict[str, Any] | None:
    """The checkpoint to resume, or None (saying why when train.resume is true) for a new run.
    `key` is the resume key of today's params (genlab.training.loop.resume_key)."""
    if not train.resume:
        return None
    if not where.checkpoint.exists():
        print(f"train.resume is true but {where.checkpoint} does not exist: starting a new run")
        return None
    state = checkpoint.load(where.checkpoint, fix="set train.resume=false to start a new run")
    run_id = _unfinished_run(where)
    if run_id is None or state.get("run_id") != run_id:
        print(f"{where.checkpoint} belongs to run {state.get('run_id')}, not to an unfinished run: starting a new run")
        return None
    status = _status(run_id)
    if status not in RESUMABLE:
        print(f"run {run_id} of {where.checkpoint} is {status or 'not in the MLflow store'}: starting a new run")
        return None
    check_resumable(state, key, train.epochs, family_name)
    print(f"resuming from {where.checkpoint} after epoch {state['epoch']}")
    return state


def reopen(state: dict[str, Any], train: TrainConfig) -> store.MlflowTracker:
    """The checkpoint's run, RUNNING again, tagged with what the resume changed."""
    tracker = store.attach(state["run_id"])
    tracker.reopen()
    tags = {"genlab.resumed_from_epoch": state["epoch"]}
    # MLflow params cannot change once logged; the tag says how many epochs the run now trains.
    if tracker.client.get_run(tracker.run_id).data.params.get("train.epochs") != str(train.epochs):
        tags["genlab.epochs_after_resume"] = train.epochs
    tracker.set_tags(tags)
    return tracker


def started(where: ModelPaths, run_id: str) -> None:
    """Record `run_id` as the unfinished run, after closing the one it replaces and dropping its checkpoint."""
    previous = _unfinished_run(where)
    if previous and previous != run_id and _status(previous) == "RUNNING":
        why = f"its training stopped without closing it (killed?); run {run_id} started in its place"
        old = store.attach(previous)
        old.set_tags({"genlab.closed_reason": why})
        old.finish("KILLED")
        print(f"MLflow run {previous} closed as KILLED: {why}")
    where.checkpoint.unlink(missing_ok=True)
    atomic.write_json(where.training_run, {"run_id": run_id})


def inputs_digest(key: str, data_md5: str, upstream_md5: dict[str, str]) -> str:
    """What DVC reruns train for, in one digest: params (the resume key), data, upstream models and code."""
    digest = hashlib.sha256(json.dumps([key, data_md5, sorted(upstream_md5.items())]).encode())
    package = Path(__file__).resolve().parent
    stage = package.parents[1] / "stages" / "train.py"
    for path in sorted([*package.rglob("*.py"), *([stage] if stage.exists() else [])]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def finished(where: ModelPaths, run_id: str, inputs: str) -> None:
    """Nothing is left to resume: the model is in its model file and the run is closed. The final checkpoint
    stays, for `finished_state`."""
    atomic.write_json(where.training_run, {"run_id": run_id, "finished": True, "inputs": inputs})


def finished_state(where: ModelPaths, inputs: str) -> dict[str, Any] | None:
    """The final checkpoint of a FINISHED run trained from exactly `inputs`, if there is one."""
    try:
        marker = json.loads(where.training_run.read_text())
    except (OSError, ValueError):
        return None
    if not marker.get("finished") or marker.get("inputs") != inputs or not where.checkpoint.exists():
        return None
    try:
        state = checkpoint.load(where.checkpoint, fix="not restoring the finished run from it, training afresh")
    except CheckpointError as exc:
        # Only a shortcut past a retrain is lost (the new run's `started` deletes the file); refusing would
        # leave the user stuck until they deleted the file by hand.
        print(exc)
        return None
    if state.get("run_id") != marker["run_id"] or _status(marker["run_id"]) != "FINISHED":
        return None
    return state
