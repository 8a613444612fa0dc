"""MLflow tracking: where runs are stored, what every run records, and safe concurrent writes.

The default store is an SQLite file in the *main* repository root, even when DVC runs a stage in a
temporary copy (`dvc exp run --temp/--queue` work under <root>/.dvc/tmp/exps/...), so every run of
a project lands in one place. Each write takes a file lock because SQLite with several writers
(`dvc queue start -j 2`) otherwise fails with 'database is locked' and loses the run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import posixpath
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest.mock
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from genlab.core import atomic, machine
from genlab.core.errors import StorageError, TrackingError
from genlab.core.paths import ModelPaths
from genlab.data.checksums import md5_file

if TYPE_CHECKING:  # torch and the config (which loads the registries) cost seconds: reports need neither
    import torch

    from genlab.config.experiment import Config

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


_PIPELINE_WRITES = (":(top,exclude,glob)**/dvc.lock", ":(top,exclude)metrics")


def git_state(cwd: str | Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout that runs the stage; ('unknown', True) outside git. Dirty means the
    sources differ from the commit: what the pipeline itself writes (dvc.lock, metrics/) does not count, since
    DVC rewrites dvc.lock after each stage, before train asks (a stale lock made an untouched clone dirty)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *_PIPELINE_WRITES],
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


# A server that is not there, or that died in the middle of an answer (killed while it wrote a response).
_GONE = ("Max retries exceeded", "Failed to establish", "Connection broken", "Connection aborted")


def _explain(exc: Exception, uri: str) -> str:
    where, code = display_uri(uri), getattr(exc, "error_code", "")
    db = _sqlite_path(uri)
    if db is not None and any(sign in str(exc) for sign in _DAMAGED):
        return _damaged(db, next(sign for sign in _DAMAGED if sign in str(exc)))
    if "Current state is deleted" in str(exc):
        return (
            f"{str(exc).splitlines()[0]} (deleted in the MLflow UI?): restore it there (Deleted runs, Restore) or "
            "with `mlflow runs restore --run-id <id>`, or retrain (`dvc repro -f train`) for a new run"
        )
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
    if any(sign in str(exc) for sign in _GONE):
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
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    # requests' from artifact uploads; SQLAlchemy's raw ones when MLflow opens an SQLite file it cannot read
    except (MlflowException, requests.RequestException, SQLAlchemyError, sqlite3.Error) as exc:
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


# What SQLite says of a file that is not (or no longer) a whole database: a truncated or overwritten mlflow.db.
_DAMAGED = ("database disk image is malformed", "file is not a database")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an sqlite:/// store; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def backup_path(db: Path) -> Path:
    return db.with_name(db.name + ".bak")


def _damaged(db: Path, detail: str) -> str:
    copy = backup_path(db)
    if copy.is_file():
        restore = f"genlab's backup {copy} of {time.strftime('%d %b %Y %H:%M', time.localtime(copy.stat().st_mtime))}"
    else:
        restore = f"a copy of your own (genlab made none: `python -m genlab.tracking.store backup` writes {copy.name})"
    return (
        f"the MLflow store {db} is damaged ({detail}). Its runs are only in this file (DVC does not track it): "
        f"restore {restore} over it, or move it aside (`mv {db.name} {db.name}.damaged`) to start an empty store"
    )


def _read_store(db: Path) -> str | None:
    """Check `db` as SQLite reads it; its MLflow schema revision (None before MLflow created its tables)."""
    try:
        con = sqlite3.connect(db, timeout=60)  # waits for a writer's commit; rolls back a killed one's journal
        try:
            problems = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise TrackingError(_damaged(db, "; ".join(problems)))
            if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                return None
            found = con.execute("SELECT version_num FROM alembic_version").fetchone()
            return found[0] if found else None
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise TrackingError(_damaged(db, str(exc))) from None
        raise TrackingError(f"could not read the MLflow store {db}: {exc}") from None


def check_store(uri: str) -> None:
    """Before MLflow opens an SQLite store: a damaged file, a directory or a schema of a newer MLflow is a
    clear error (MLflow's own is a traceback or says to downgrade nothing); a schema of an older MLflow is
    migrated, as MLflow only tells one to do, after a backup (migrations are not transactional)."""
    db = _sqlite_path(uri)
    if db is None or not db.exists():
        return  # another kind of store, or a new one: MLflow creates it
    if not db.is_file():
        raise TrackingError(
            f"the MLflow store {db} is not a file (a directory?): move it away, and MLflow creates a new store there"
        )
    revision = _read_store(db)
    if revision is None:
        return  # created but killed before its tables: MLflow creates them on first use
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    head = script.get_current_head()
    if revision == head:
        return
    if revision not in {rev.revision for rev in script.walk_revisions()}:
        import mlflow

        raise TrackingError(
            f"the MLflow store {db} has schema revision {revision}, which MLflow {mlflow.__version__} does not know: "
            "a newer MLflow wrote it. Track with that MLflow version, or restore a copy of the store from before"
            + (f" (genlab's backup: {backup_path(db)})" if backup_path(db).is_file() else "")
        )
    _migrate(db, revision, head)


def _migrate(db: Path, revision: str, head: str) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    with FileLock(str(db.with_name(".mlflow.lock"))):
        if _read_store(db) != revision:
            return  # another process migrated it while this one waited
        copy = _backup(db)
        engine = sqlalchemy.create_engine(f"sqlite:///{db}")
        try:
            _upgrade_db(engine)
        finally:
            engine.dispose()
    print(f"migrated the MLflow store {db} from schema {revision} to {head}; the store as it was: {copy}")


def backup(db: Path | None) -> Path:
    """Copy the SQLite store `db` to <db>.bak with SQLite's backup API, which copies a consistent state while
    others write. Only a store that reads whole replaces the backup."""
    if db is None:
        raise TrackingError(
            f"the MLflow store {display_uri(tracking_uri())} is not an SQLite file: back it up where it runs"
        )
    if not db.is_file():
        raise TrackingError(f"no MLflow store to back up: {db} is not a file")
    with FileLock(str(db.with_name(".mlflow.lock"))):
        return _backup(db)


def _backup(db: Path) -> Path:
    _read_store(db)
    copy = backup_path(db)
    with atomic.atomic_path(copy) as tmp:
        source, target = sqlite3.connect(db), sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
    return copy


# Artifacts are checked after each upload: a full disk (or a server's) once left the run's figures as 0-byte files.


def store_file(repo: Any, local: Path, artifact_dir: str | None, owner: str, md5: bool = False) -> None:
    """Upload `local` into `artifact_dir` of `repo` (an MLflow ArtifactRepository) and check that the store holds
    all of it: its size, and its md5 when `md5`. A stored file of the same name is copied first and put back
    when the new one is not whole."""
    name = posixpath.join(artifact_dir, local.name) if artifact_dir else local.name
    size, digest = local.stat().st_size, md5_file(local) if md5 else None
    try:
        with tempfile.TemporaryDirectory() as tmp, _previous(repo, name, Path(tmp)) as undo:
            try:
                repo.log_artifact(str(local), artifact_dir)
                problem = _mismatch(repo, name, size, digest, Path(tmp) / "check")
            except OSError as exc:  # a full disk, a read-only folder
                problem = exc.strerror or str(exc)
            except BaseException:  # the store refused (a TrackingError follows), Ctrl-C: no half file either
                undo()
                raise
            if problem is None:
                return
            kept = undo()
    except OSError as exc:  # no room for the copy of the previous one: nothing was uploaded
        problem, kept = exc.strerror or str(exc), f"nothing was uploaded: the {name} stored before is as it was"
    where = repo.artifact_uri
    if hasattr(repo, "artifact_dir"):
        there = next(p for p in (Path(repo.artifact_dir), *Path(repo.artifact_dir).parents) if p.exists())
        where = f"{repo.artifact_dir} ({shutil.disk_usage(there).free / 2**20:.1f} MiB free)"
    raise StorageError(
        f"artifact {name} of MLflow {owner} was not stored whole in {display_uri(where)}: {problem}; {kept}. "
        "Free some space there (or make it writable) and rerun the stage"
    )


def _mismatch(repo: Any, name: str, size: int, digest: str | None, scratch: Path) -> str | None:
    """What the stored `name` lacks compared with its source; None when it is whole."""
    stored = {info.path: info.file_size for info in repo.list_artifacts(posixpath.dirname(name) or None)}
    if stored.get(name) != size:
        return f"the store holds {stored.get(name, 'none')} of its {size} bytes"
    if digest is not None:
        found = md5_file(_fetch(repo, name, scratch))
        if found != digest:
            return f"its md5 there is {found}, not {digest}"
    return None


@contextlib.contextmanager
def _previous(repo: Any, name: str, scratch: Path) -> Iterator[Any]:
    """Keep a copy of the stored `name` that an upload replaces (a copy, not a link: a writer that truncates the
    file in place would empty a link too); yields what puts it back, or removes a partial new one where there
    was none, and says which."""
    folder, local = posixpath.dirname(name) or None, getattr(repo, "artifact_dir", None)
    target = Path(local) / name if local is not None else None
    if target is not None and target.is_file():
        copy = scratch / "previous" / target.name
        copy.parent.mkdir()
        shutil.copyfile(target, copy)
    elif target is None and name in {info.path for info in repo.list_artifacts(folder)}:
        copy = _fetch(repo, name, scratch / "previous")
    elif target is not None:
        yield lambda: _undone(lambda: target.unlink(missing_ok=True), "there was none of it before, nor is there now")
        return
    else:
        yield lambda: "there was none of that name before"
        return
    size, digest = copy.stat().st_size, md5_file(copy)

    def put_back() -> None:
        if _mismatch(repo, name, size, digest, scratch / "recheck") is None:
            return  # the failed upload left it as it was
        if target is None:
            repo.log_artifact(str(copy), folder)
            return
        target.unlink(missing_ok=True)  # frees what the partial file took, on a full disk
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(copy, tmp)

    yield lambda: _undone(put_back, f"the {name} stored before is kept")


def quiet_downloads() -> contextlib.AbstractContextManager:
    """MLflow artifact downloads without the progress bar it prints for every file."""
    return unittest.mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})


def _fetch(repo: Any, name: str, scratch: Path) -> Path:
    """The stored `name` as a local file: itself in a local store, else a download into `scratch`."""
    if getattr(repo, "artifact_dir", None) is not None:
        return Path(repo.artifact_dir) / name
    scratch.mkdir(exist_ok=True)
    with quiet_downloads():
        return Path(repo.download_artifacts(name, str(scratch)))


def _undone(undo: Any, done: str) -> str:
    try:
        undo()
    except Exception as exc:  # the store that failed the upload may well fail this too
        return f"undoing it failed too ({getattr(exc, 'strerror', None) or exc})"
    return done


@functools.cache
def _verifying_client() -> type:
    """MlflowClient whose artifact uploads go through `store_file`: MLflow's log_image, log_text and log_dict
    upload through its log_artifact, a logged model's files through log_model_artifacts."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    class VerifyingClient(MlflowClient):
        def _repo(self, location: str) -> Any:
            return get_artifact_repository(location, tracking_uri=self.tracking_uri)

        def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None, md5: bool = False):
            repo = self._repo(self.get_run(run_id).info.artifact_uri)
            store_file(repo, Path(local_path), artifact_path, f"run {run_id}", md5)

        def log_model_artifacts(self, model_id: str, local_dir: str, artifact_path: str | None = None) -> None:
            repo = self._repo(self.get_logged_model(model_id).artifact_location)
            for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
                folder = path.parent.relative_to(local_dir).as_posix()
                parts = [part for part in (artifact_path, folder) if part and part != "."]
                store_file(repo, path, posixpath.join(*parts) if parts else None, f"model {model_id}")

    return VerifyingClient


class MlflowTracker:
    """One MLflow run, written through a lock. Implements training.Tracker."""

    def __init__(self, run_id: str, uri: str, root: Path):
        self.run_id = run_id
        self.uri = uri
        self.client = _verifying_client()(uri)  # MLflow imported late: it costs ~2 s and tests of other parts skip it
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
        check_store(uri)
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
        from genlab.core import visualise

        with self._writing():
            for key, batch in images.items():
                self.client.log_image(self.run_id, visualise.to_grid(batch), key=key, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        with self._writing():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """genlab's own files (figures, metrics, the model file) are checked by md5, not only by size."""
        with self._writing():
            self.client.log_artifact(self.run_id, str(path), artifact_path, md5=True)

    def log_model(self, family: Any, example: torch.Tensor, registered_name: str | None) -> None:
        """The trained family as the run's MLflow model `model` (genlab.tracking.mlflow_model), a version of
        `registered_name` in the model registry unless that name is another user's on a server (then a warning)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        from genlab.tracking import mlflow_model

        # MLflow's log_model makes its own client and uploads from a folder gone when it returns: it gets the
        # verifying client class for the call, so that the files are checked while they are there.
        with self._writing():
            mlflow.set_tracking_uri(self.uri)
            verifying = unittest.mock.patch.object(mlflow, "MlflowClient", _verifying_client())
            # Leaving start_run marks the run FINISHED; active() settles it.
            with verifying, mlflow.start_run(run_id=self.run_id):
                info = mlflow_model.log(family, example, None)
            if registered_name is None:
                return
            try:  # registered apart, so that a refusal costs the registration only, not the trained run
                mlflow.register_model(info.model_uri, registered_name)
            except MlflowException as exc:
                if exc.error_code != "PERMISSION_DENIED":
                    raise
                # On a shared server a name belongs to whoever created it first; others may only read it.
                user = os.environ.get("MLFLOW_TRACKING_USERNAME", "?")
                print(
                    f"warning: user {user!r} may not register models as {registered_name!r} on "
                    f"{display_uri(self.uri)} (HTTP 403: another user created that name, or an admin reserved "
                    f"it): the run's model is logged but not registered. Once its owner or an admin grants "
                    f"{user!r} EDIT on it (docs/team.md), mlflow.register_model('runs:/{self.run_id}/model', "
                    f"{registered_name!r}) registers it",
                    file=sys.stderr,
                )

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
        RUNNING until a resume continues it or the next training closes it (genlab.training.resume)."""
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


REPORTS = "genlab-reports"  # comparison runs: kept out of the experiments whose runs they compare


def log_comparison(uri: str, files: list[Path], compared: list[str], name: str) -> str:
    """A FINISHED run of experiment genlab-reports holding a report's `files` (artifacts report/, each checked
    like genlab's own) and tagged with the ids of the runs it compares; returns its id."""
    db = _sqlite_path(uri)
    with _store_lock(uri, db.parent if db else Path()), store_errors(uri):
        client = _verifying_client()(uri)
        experiment = client.get_experiment_by_name(REPORTS)
        if experiment is None:
            location = (db.parent / "mlartifacts").as_uri() if db else None  # beside the store, as 'genlab'
            experiment_id = client.create_experiment(REPORTS, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        ids = ",".join(compared)
        tags = {"genlab.compared_runs": ids if len(ids) <= 5000 else f"{len(compared)} runs (too many to list)"}
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        for path in files:
            client.log_artifact(run.info.run_id, str(path), "report", md5=True)
        client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def attach(run_id: str) -> MlflowTracker:
    """Re-open the run a previous stage created (evaluate and sample add to the train run)."""
    root = repo_root()
    uri = tracking_uri(root)
    check_store(uri)
    return MlflowTracker(run_id, uri, root)


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
    root = (root or repo_root()).resolve()
    db = root / "mlflow.db"
    if not db.is_file():
        return 0
    _read_store(db)  # a damaged file: a clear error instead of SQLite's traceback from the queries below
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

    uri = tracking_uri()
    check_store(uri)
    with store_errors(uri):
        experiment = MlflowClient(uri).get_experiment_by_name(experiment_name())
    where = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"http://127.0.0.1:{port}/#/{where}?workflowType=machine_learning"


def run_url(run_id: str, port: int = 5000) -> str:
    """The page of run `run_id` on its Model metrics tab (the curves; MLflow has no run setting for the tab a run
    opens on, only this route): on the tracking server, or in `make ui` for the project's SQLite store."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    with store_errors(uri):
        experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    route = f"/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"
    if uri.startswith(("http://", "https://")):
        return display_uri(uri).rstrip("/") + route
    return f"http://127.0.0.1:{port}{route}   (start the UI with `make ui`)"


def wait_until_answers(server: subprocess.Popen, port: int, timeout_s: float = 300) -> float:
    """Seconds until `server` answers GET /health on 127.0.0.1:`port` (mlflow ui takes tens of seconds to start
    its workers: a URL printed before that opens on an error page). Raises TrackingError if it exits first."""
    began = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return time.monotonic() - began
        except urllib.error.HTTPError:  # an answer all the same
            return time.monotonic() - began
        except OSError:
            if server.poll() is not None:
                raise TrackingError(f"mlflow ui exited with status {server.returncode} before it answered") from None
            if time.monotonic() - began > timeout_s:
                raise TrackingError(f"mlflow ui did not answer on port {port} within {timeout_s:.0f} s") from None
            time.sleep(0.5)


UI_LOG = "mlflow-ui.log"  # the server's own lines (dozens of uvicorn and scheduler lines): not the terminal's


def serve_ui(port: int) -> int:
    """`mlflow ui` on the project's store, its output in UI_LOG; the URL to open is printed once the server answers."""
    url = ui_url(port)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise TrackingError(f"port {port} is taken (another mlflow ui?): stop it, or `make ui UI_PORT={port + 1}`")
    log_path = repo_root() / UI_LOG
    print(f"starting mlflow ui on port {port} (its log: {UI_LOG}) ...", flush=True)
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            waited = wait_until_answers(server, port)
        except TrackingError as exc:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise TrackingError(f"{exc}; the end of {UI_LOG}:\n{tail}") from None
        print(f"mlflow ui answers (after {waited:.0f} s). genlab's runs (Model training view): {url}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        return server.wait()
    except BaseException:  # Ctrl-C, or it never answered: no server left behind
        server.terminate()
        server.wait()
        raise


def _main() -> None:
    if sys.argv[1:2] == ["ui"]:
        sys.exit(serve_ui(int(sys.argv[2]) if len(sys.argv) > 2 else 5000))
    if sys.argv[1:] == ["relocate"]:
        check_store(tracking_uri())  # `make ui` runs this first: a store of an older MLflow is migrated here
        print(f"rewrote {relocate()} artifact location(s) to {(repo_root() / 'mlartifacts').as_uri()}")
    elif sys.argv[1:] == ["url"]:
        print(f"genlab's runs (Model training view): {ui_url()}")
    elif sys.argv[1:] == ["backup"]:
        copy = backup(_sqlite_path(tracking_uri()))
        print(f"backed up the MLflow store to {copy} (to restore it, with no run writing: copy it over the store)")
    else:
        sys.exit("usage: python -m genlab.tracking.store relocate | url | backup | ui [PORT]")


if __name__ == "__main__":  # python -m genlab.tracking.store relocate | url | backup | ui [PORT]
    from genlab.core.errors import exit_on_error

    exit_on_error(_main)
