"""MLflow tracking: where runs are stored, what every run records, and safe concurrent writes.

The default store is an SQLite file in the *main* repository root, even when DVC runs a stage in a
temporary copy (`dvc exp run --temp/--queue` work under <root>/.dvc/tmp/exps/...), so every run of
a project lands in one place. Each write takes a file lock because SQLite with several writers
(`dvc queue start -j 2`) otherwise fails with 'database is locked' and loses the run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from genlab import machine
from genlab.config import Config
from genlab.paths import ModelPaths
from genlab.visualise import to_grid

EXPERIMENT = "genlab"
_TEMP_WORKSPACE = (".dvc", "tmp", "exps")


def repo_root(start: str | Path | None = None) -> Path:
    """The main repository root: GENLAB_ROOT, else the cwd with any DVC temp-workspace suffix removed."""
    if os.environ.get("GENLAB_ROOT"):
        return Path(os.environ["GENLAB_ROOT"]).resolve()
    path = Path(start or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(_TEMP_WORKSPACE) + 1):
        if parts[i : i + len(_TEMP_WORKSPACE)] == _TEMP_WORKSPACE:
            return Path(*parts[:i])
    return path


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def git_state(cwd: str | Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout that runs the stage; ('unknown', True) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def pip_freeze() -> str:
    dists = {(d.metadata["Name"] or "?").lower(): d.version for d in importlib.metadata.distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(dists.items()))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _store_lock(uri: str, root: Path) -> Any:
    return FileLock(str(root / ".mlflow.lock")) if uri.startswith("sqlite") else contextlib.nullcontext()


class MlflowTracker:
    """One MLflow run, written through a lock. Implements training.Tracker."""

    def __init__(self, run_id: str, uri: str, root: Path):
        from mlflow import MlflowClient  # imported late: it costs ~2 s and tests of other parts skip it

        self.run_id = run_id
        self.uri = uri
        self.client = MlflowClient(uri)
        self._lock = _store_lock(uri, root)

    @classmethod
    def create(cls, params: dict[str, Any], tags: dict[str, str], run_name: str | None = None) -> MlflowTracker:
        """A new run of experiment 'genlab' with `params` (flat: the params the run reads) and `tags`."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        root = repo_root()
        uri = tracking_uri(root)
        with _store_lock(uri, root):
            if uri.startswith("sqlite"):
                relocate(root)  # a store copied or moved with the repository keeps working
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
            else:
                experiment_id = experiment.experiment_id
            run = client.create_run(experiment_id, tags=tags, run_name=run_name)
            batch = [Param(k, str(v)) for k, v in params.items()]
            for start in range(0, len(batch), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run.info.run_id, params=batch[start : start + 100])
        return cls(run.info.run_id, uri, root)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        with self._lock:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_images(self, images: dict[str, torch.Tensor], step: int) -> None:
        with self._lock:
            for key, batch in images.items():
                self.client.log_image(self.run_id, to_grid(batch), key=key, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        with self._lock:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._lock:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, family: Any, example: torch.Tensor, registered_name: str | None) -> None:
        """The trained family as the run's MLflow model `model` (genlab.mlflow_model), a version of
        `registered_name` in the model registry."""
        import mlflow

        from genlab import mlflow_model

        with self._lock:
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):  # leaving it marks the run FINISHED; active() settles it
                mlflow_model.log(family, example, registered_name)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._lock:
            self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        with self._lock:
            self.client.set_terminated(self.run_id, status)

    def reopen(self) -> None:
        """RUNNING again: a resume continues a run that a Ctrl-C or a divergence closed."""
        with self._lock:
            self.client.update_run(self.run_id, status="RUNNING")

    def metric_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    @contextlib.contextmanager
    def active(self) -> Iterator[MlflowTracker]:
        """Mark the run FAILED (or KILLED on Ctrl-C) if the block raises, FINISHED otherwise."""
        try:
            yield self
        except KeyboardInterrupt:
            self.finish("KILLED")
            raise
        except BaseException:
            self.finish("FAILED")
            raise
        self.finish("FINISHED")


def run_tags(
    cfg: Config, data_checksum: str, device: torch.device, fingerprint: dict[str, Any], where: ModelPaths
) -> dict[str, str]:
    commit, dirty = git_state()
    tags = {
        "genlab.model_name": where.name,
        "mlflow.source.git.commit": commit,
        "mlflow.source.name": "stages/train.py",
        "genlab.git_commit": commit,
        "genlab.git_dirty": str(dirty).lower(),
        "genlab.family": cfg.model.family,
        "genlab.dataset": cfg.data.name,
        "genlab.data_md5": data_checksum,
        "genlab.device": str(device),
        "env.platform": platform.platform(),
        "env.cpu_count": str(os.cpu_count()),
        **machine.tags(fingerprint),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def changed_params(view: dict[str, Any], committed: dict[str, Any]) -> list[str]:
    """`key=value` for each param of a run's view that differs from the committed one (shortest keys)."""
    now, then = flatten(view), flatten(committed)
    return [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in now.items() if then.get(key) != value]


def run_name(cfg: Config, tags: dict[str, str], view: dict[str, Any], committed: dict[str, Any] | None) -> str:
    """What tells the run apart in the runs table, first: the params that differ from the committed
    params.yaml (up to three), then the DVC experiment name, the model's name when not the default, family
    and dataset; with nothing changed, the time first (the table cuts names at ~20 characters). MLflow's own
    random names would repeat here, because seeding Python's `random` fixes them."""
    changes = changed_params(view, committed) if committed is not None else []
    head = " ".join(changes[:3]) + (" …" if len(changes) > 3 else "")
    model = tags.get("genlab.model_name", "model")
    what = f"{'' if model == 'model' else model + ' '}{cfg.model.family}-{cfg.data.name}"
    parts = [head, tags.get("dvc.exp_name", ""), what]
    if not head and "dvc.exp_name" not in tags:
        parts.insert(0, time.strftime("%H:%M:%S %d %b %Y"))
    return " | ".join(p for p in parts if p)


def attach(run_id: str) -> MlflowTracker:
    """Re-open the run a previous stage created (evaluate and sample add to the train run)."""
    root = repo_root()
    return MlflowTracker(run_id, tracking_uri(root), root)


# MLflow records artifact locations as absolute file:// URIs; these columns hold them (MLflow 3).
_LOCATIONS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


def relocate(root: Path | None = None) -> int:
    """Point an SQLite store's artifact locations at <root>/mlartifacts after the repository moved (or was
    copied): MLflow keeps absolute paths, so a moved store would look for its images in the old place.
    Returns the number of rows rewritten (0 when nothing pointed elsewhere)."""
    import sqlite3

    root = (root or repo_root()).resolve()
    db = root / "mlflow.db"
    if not db.is_file():
        return 0
    new = (root / "mlartifacts").as_uri()
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone():
            return 0  # a store whose creation was interrupted: MLflow creates its tables on first use
        found = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,)).fetchone()
        old = found[0] if found else None
        if not old or old == new or not old.endswith("/mlartifacts"):
            return 0
        with con:
            return sum(
                con.execute(
                    f"UPDATE {table} SET {col} = ? || substr({col}, ?) WHERE {col} LIKE ?",
                    (new, len(old) + 1, old + "%"),
                ).rowcount
                for table, cols in _LOCATIONS.items()
                for col in cols
            )
    finally:
        con.close()


def ui_url(port: int = 5000) -> str:
    """Where `mlflow ui` shows genlab's runs: the Model training view of experiment 'genlab' (the UI's
    start page is its GenAI dashboard, where runs do not appear)."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri()).get_experiment_by_name(EXPERIMENT)
    where = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"http://127.0.0.1:{port}/#/{where}?workflowType=machine_learning"


if __name__ == "__main__":  # python -m genlab.tracking relocate | url
    import sys

    if sys.argv[1:] == ["relocate"]:
        print(f"rewrote {relocate()} artifact location(s) to {(repo_root() / 'mlartifacts').as_uri()}")
    elif sys.argv[1:] == ["url"]:
        print(f"genlab's runs (Model training view): {ui_url()}")
    else:
        sys.exit("usage: python -m genlab.tracking relocate | url")
