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
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from genlab import machine
from genlab.config import Config
from genlab.errors import TrackingError
from genlab.paths import ModelPaths
from genlab.visualise import to_grid

EXPERIMENT = "genlab"


def experiment_name() -> str:
    """The MLflow experiment runs go to: MLflow's own MLFLOW_EXPERIMENT_NAME, else 'genlab' (on a team server,
    an experiment of one's own is one's to write; another's needs its owner's permission)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


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


def display_uri(uri: str) -> str:
    """`uri` fit to print: a password written into it (http://user:password@host) becomes ***."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[1]}"))


def _explain(exc: Exception, uri: str) -> str:
    where, code = display_uri(uri), getattr(exc, "error_code", "")
    if code == "UNAUTHENTICATED" or " 401 " in str(exc):
        return (
            f"the tracking server {where} refused the login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account of that server (docs/team.md)"
        )
    if code == "PERMISSION_DENIED" or " 403 " in str(exc):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "?")
        return (
            f"user {user!r} may not change experiment {experiment_name()!r} on {where} (HTTP 403): its owner or an "
            "admin grants EDIT permission, or set MLFLOW_EXPERIMENT_NAME to an experiment of your own (docs/team.md)"
        )
    if "Max retries exceeded" in str(exc) or "Failed to establish" in str(exc):
        return (
            f"the MLflow tracking server {where} did not answer, after MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_"
            "RETRIES): start it (`make server`) or point MLFLOW_TRACKING_URI at a running one; a training stopped "
            "by this keeps its last checkpoint, and train.resume: true continues it, logging what is missing"
        )
    return f"the MLflow store {where} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """MLflow's failures as a TrackingError that says what to do (a GenlabError: no traceback, exit 2)."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as exc:  # the latter from artifact uploads
        raise TrackingError(_explain(exc, uri)) from exc


def check_server(uri: str) -> None:
    """Fail at once when a tracking server is not there, instead of after MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    health = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], path="/health"))
    try:
        with urllib.request.urlopen(health, timeout=15):
            return
    except OSError as exc:
        raise TrackingError(
            f"no MLflow tracking server answers at {display_uri(uri)} ({exc}): start it (`make server`, "
            "docs/team.md) or unset MLFLOW_TRACKING_URI to track into mlflow.db"
        ) from exc


class MlflowTracker:
    """One MLflow run, written through a lock. Implements training.Tracker."""

    def __init__(self, run_id: str, uri: str, root: Path):
        from mlflow import MlflowClient  # imported late: it costs ~2 s and tests of other parts skip it

        self.run_id = run_id
        self.uri = uri
        self.client = MlflowClient(uri)
        self._lock = _store_lock(uri, root)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock, store_errors(self.uri):
            yield

    @classmethod
    def create(cls, params: dict[str, Any], tags: dict[str, str], run_name: str | None = None) -> MlflowTracker:
        """A new run of experiment 'genlab' with `params` (flat: the params the run reads) and `tags`."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        root = repo_root()
        uri = tracking_uri(root)
        check_server(uri)
        local = uri.startswith("sqlite")
        with _store_lock(uri, root), store_errors(uri):
            if local:
                relocate(root)  # a store copied or moved with the repository keeps working
            client = MlflowClient(uri)
            name = experiment_name()
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                # A server stores artifacts itself (mlflow-artifacts:/); SQLite's go beside it, in mlartifacts/.
                location = (root / "mlartifacts").as_uri() if local else None
                experiment_id = client.create_experiment(name, artifact_location=location)
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
        with self._writing():
            self.client.log_batch(self.run_id, metrics=batch)

    def log_images(self, images: dict[str, torch.Tensor], step: int) -> None:
        with self._writing():
            for key, batch in images.items():
                self.client.log_image(self.run_id, to_grid(batch), key=key, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        with self._writing():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._writing():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, family: Any, example: torch.Tensor, registered_name: str | None) -> None:
        """The trained family as the run's MLflow model `model` (genlab.mlflow_model), a version of
        `registered_name` in the model registry."""
        import mlflow

        from genlab import mlflow_model

        with self._writing():
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):  # leaving it marks the run FINISHED; active() settles it
                mlflow_model.log(family, example, registered_name)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._writing():
            self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        with signals_held(), self._writing():
            self.client.set_terminated(self.run_id, status)

    def reopen(self) -> None:
        """RUNNING again: a resume continues a run that a Ctrl-C or a divergence closed."""
        with self._writing():
            self.client.update_run(self.run_id, status="RUNNING")

    def metric_steps(self, key: str) -> set[int]:
        with store_errors(self.uri):
            return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    @contextlib.contextmanager
    def active(self) -> Iterator[MlflowTracker]:
        """Mark the run FAILED (or KILLED on Ctrl-C) if the block raises, FINISHED otherwise."""
        try:
            yield self
        except KeyboardInterrupt:
            self._close_failed("KILLED")
            raise
        except BaseException:
            self._close_failed("FAILED")
            raise
        self.finish("FINISHED")

    def _close_failed(self, status: str) -> None:
        """Best effort: when the store itself failed, the original error is the one to show; the run stays
        RUNNING until a resume continues it or the next training closes it (genlab.resume)."""
        try:
            self.finish(status)
        except TrackingError:
            print(
                f"could not mark MLflow run {self.run_id} {status} either: it stays RUNNING until a resume continues "
                "it or the next new run closes it",
                file=sys.stderr,
            )


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM/SIGINT arriving in the block are handled after it. torchrun sends SIGTERM to the other workers
    when one dies, often while rank 0 is already marking the run FAILED after the broken collective: the
    handler's SystemExit would cut that write (`finish`) short and leave the run RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python's signal handlers (and may replace them)
        return
    caught: list[int] = []
    held = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


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
        found = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment_name(),)).fetchone()
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

    experiment = MlflowClient(tracking_uri()).get_experiment_by_name(experiment_name())
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
