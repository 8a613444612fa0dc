"""The MLflow store: it survives moving the repository; a run is closed even when a stop signal interrupts; an
artifact is stored whole or not at all; a damaged or foreign store is a clear error."""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.core.errors import StorageError, TrackingError
from genlab.tracking import store


def test_a_moved_store_still_serves_its_images(empty_store, tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copyfile(empty_store, old / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(old))
    tracker = store.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")
    tracker.log_images({"samples": torch.rand(4, 1, 8, 8)}, step=1)
    tracker.finish()
    shutil.move(old, new)
    monkeypatch.setenv("GENLAB_ROOT", str(new))
    assert store.relocate() > 0 and store.relocate() == 0  # once: then nothing points elsewhere
    client = store.attach(tracker.run_id).client
    (image,) = [
        a.path
        for a in client.list_artifacts(tracker.run_id, "images")
        if a.path.endswith(".png") and "compressed" not in a.path
    ]
    local = client.download_artifacts(tracker.run_id, image, str(tmp_path / "dl"))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(old) not in client.get_run(tracker.run_id).info.artifact_uri


def test_a_store_whose_creation_was_killed_is_created_on_the_next_run(tmp_path, monkeypatch):
    """kill -9 during the first MLflow write can leave mlflow.db without tables (seen with bench/faults.py)."""
    import sqlite3

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(tmp_path))
    sqlite3.connect(tmp_path / "mlflow.db").close()  # the file exists, the schema does not
    assert store.relocate() == 0
    tracker = store.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")
    tracker.finish()
    assert store.attach(tracker.run_id).client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_stop_signal_during_the_closing_write_still_marks_the_run(run, monkeypatch):
    """torchrun's SIGTERM reached rank 0 while it marked its run FAILED after a dead peer: the run stayed RUNNING."""
    tracker = run
    set_terminated = tracker.client.set_terminated

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line
        set_terminated(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "set_terminated", interrupted)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with pytest.raises(SystemExit) as stopped, tracker.active():
            raise RuntimeError("Connection closed by peer")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143
    assert store.attach(tracker.run_id).client.get_run(tracker.run_id).info.status == "FAILED"


# --- the artifact store: every upload is checked, and a failed one keeps the file stored before (issue 23, 6)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An SQLite store with MLflow's tables and nothing in them: creating the tables takes MLflow ~20 s here."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def run(empty_store, tmp_path, monkeypatch):
    """A run of a fresh SQLite store in tmp_path, its artifacts beside it in mlartifacts/."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(tmp_path))
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return store.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")


def _stored(tracker, name: str) -> Path:
    return Path(tracker.client.get_run(tracker.run_id).info.artifact_uri.removeprefix("file://"), name)


def _dest(repo, local_file, artifact_path) -> Path:
    dest = Path(repo.artifact_dir, artifact_path or "", Path(local_file).name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _emptied(self, local_file, artifact_path=None):
    """What a full disk left under an MLflow that copied in place: the name, none of the bytes, no error."""
    _dest(self, local_file, artifact_path).write_bytes(b"")


def _disk_full(self, local_file, artifact_path=None):
    _dest(self, local_file, artifact_path).write_bytes(Path(local_file).read_bytes()[:100])
    raise OSError(errno.ENOSPC, "No space left on device")


def _scrambled(self, local_file, artifact_path=None):
    """All the bytes, not the same ones: only the md5 tells."""
    _dest(self, local_file, artifact_path).write_bytes(bytes(len(Path(local_file).read_bytes())))


@pytest.mark.parametrize("upload", [_emptied, _disk_full, _scrambled])
def test_a_figure_not_stored_whole_is_an_error_and_the_one_stored_before_stays(run, tmp_path, monkeypatch, upload):
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    figure = tmp_path / "figures" / "samples.png"
    figure.parent.mkdir()
    figure.write_bytes(b"\x89PNG good figure" * 100)
    run.log_artifact(figure, "samples")
    figure.write_bytes(b"\x89PNG next figure" * 100)
    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", upload)
    with pytest.raises(
        StorageError, match=r"samples/samples\.png .*(0 of its 1600 bytes|No space|md5).*stored before is kept"
    ):
        run.log_artifact(figure, "samples")
    assert _stored(run, "samples/samples.png").read_bytes() == b"\x89PNG good figure" * 100
    assert [p.name for p in _stored(run, "samples").iterdir()] == ["samples.png"]  # no copy left behind


def test_every_kind_of_upload_genlab_makes_is_checked(run, monkeypatch):
    """log_text, log_images and log_model go through MLflow's own upload paths, not only log_artifact."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from families import make_family

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", _emptied)
    with pytest.raises(StorageError, match="environment/requirements.txt"):
        run.log_text("torch==2\n", "environment/requirements.txt")
    with pytest.raises(StorageError, match=r"images/samples\+step\+3"):
        run.log_images({"samples": torch.rand(4, 1, 8, 8)}, step=3)
    family = make_family("vae", hidden=[8], latent_dim=2)
    with pytest.raises(StorageError, match="of MLflow model m-"):
        run.log_model(family, torch.zeros(2, 2), None)


def test_a_logged_model_names_the_installed_versions_and_warns_of_nothing(run, capfd):
    """No warning an ordinary run's user cannot act on: MLflow's pickle notice (genlab pickles on purpose) and its
    'mismatch' between torch 2.14.1+cu130 (torch.__version__) and the installed 2.14.1 both once filled the log."""
    import importlib.metadata

    from genlab.tracking.mlflow_model import requirements

    from families import make_family

    assert requirements() == [f"{n}=={importlib.metadata.version(n)}" for n in ("torch", "numpy")]
    run.log_model(make_family("vae", hidden=[8], latent_dim=2), torch.zeros(2, 2), None)
    err = capfd.readouterr().err
    assert "WARNING" not in err, err


class _FakeServer:
    """A tracking server's artifact store (no local folder): the first upload arrives empty."""

    artifact_uri = "mlflow-artifacts:/1/abc/artifacts"

    def __init__(self):
        self.files, self.fail = {}, True

    def log_artifact(self, local_file, artifact_path=None):
        data = b"" if self.fail else Path(local_file).read_bytes()
        self.files[posixpath.join(artifact_path or "", Path(local_file).name)] = data
        self.fail = False

    def list_artifacts(self, path=None):
        from mlflow.entities import FileInfo

        return [FileInfo(k, False, len(v)) for k, v in self.files.items() if posixpath.dirname(k) == (path or "")]

    def download_artifacts(self, name, dst_path):
        out = Path(dst_path, name)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.files[name])
        return str(out)


def test_a_server_that_took_a_figure_short_gets_the_one_before_back(tmp_path):
    server = _FakeServer()
    server.files["samples/samples.png"] = b"good" * 10
    figure = tmp_path / "samples.png"
    figure.write_bytes(b"next" * 10)
    with pytest.raises(StorageError, match=r"holds 0 of its 40 bytes; the samples/samples\.png stored before is kept"):
        store.store_file(server, figure, "samples", "run abc")
    assert server.files["samples/samples.png"] == b"good" * 10


def test_an_unwritable_artifact_folder_is_a_clear_error(run, tmp_path, monkeypatch):
    """mlartifacts/ read-only (root ignores chmod, so the refusal is simulated; by hand: a read-only mount)."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    def refused(self, local_file, artifact_path=None):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", refused)
    (tmp_path / "eval.json").write_text("{}")
    with pytest.raises(StorageError, match="metrics/eval.json .*Permission denied; there was none of it before"):
        run.log_artifact(tmp_path / "eval.json", "metrics")


# --- the SQLite store: damaged, of another MLflow's schema, not a file (issue 23, 7)


def _halved(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def test_a_damaged_store_is_a_clear_error_at_every_entry_point(run, tmp_path):
    import importlib.util

    db = tmp_path / "mlflow.db"
    assert store.backup(db) == tmp_path / "mlflow.db.bak"
    _halved(db)
    spec = importlib.util.spec_from_file_location("report_stage", Path(__file__).parents[1] / "stages" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    entry_points = {
        "relocate": store.relocate,
        "url": store.ui_url,
        "train": lambda: store.MlflowTracker.create({"seed": 0}, {}, run_name="t"),
        "evaluate, sample": lambda: store.attach(run.run_id).log_metrics({"test/x": 1.0}),
        "report": lambda: report.run(["--out", str(tmp_path / "reports")]),
        "backup": lambda: store.backup(db),
    }
    for name, entry in entry_points.items():
        with pytest.raises(TrackingError, match=rf"{db} is damaged .*restore genlab's backup {db}\.bak") as caught:
            entry()
        assert "DVC does not track it" in str(caught.value), name
    import sqlite3

    kept = sqlite3.connect(tmp_path / "mlflow.db.bak")  # the refused backup left the good one alone
    assert kept.execute("SELECT run_uuid FROM runs").fetchall() == [(run.run_id,)]


def test_a_store_of_a_newer_mlflow_is_refused_and_one_of_an_older_is_migrated_after_a_backup(
    run, tmp_path, monkeypatch
):
    import sqlite3

    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils

    db = tmp_path / "mlflow.db"
    head = ScriptDirectory.from_config(utils._get_alembic_config(db_url="")).get_revision("head")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    with pytest.raises(TrackingError, match="schema revision f00dfeedbeef, which MLflow .* does not know: a newer"):
        store.attach(run.run_id)

    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (head.down_revision,))
    upgraded = []

    def upgrade(engine):  # stands in for MLflow's migration, which would redo the last step of this new store
        backed_up = sqlite3.connect(tmp_path / "mlflow.db.bak").execute("SELECT version_num FROM alembic_version")
        upgraded.append(backed_up.fetchone()[0])
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (head.revision,))

    monkeypatch.setattr(utils, "_upgrade_db", upgrade)
    store.attach(run.run_id).log_metrics({"test/x": 1.0})
    assert upgraded == [head.down_revision]  # the backup, taken first, holds the store as it was


def test_a_directory_in_place_of_the_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(tmp_path))
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(TrackingError, match="mlflow.db is not a file"):
        store.MlflowTracker.create({"seed": 0}, {}, run_name="t")


def test_a_run_deleted_in_the_ui_says_how_to_get_it_back(run):
    run.client.delete_run(run.run_id)
    with pytest.raises(TrackingError, match="Current state is deleted.*mlflow runs restore --run-id"):
        store.attach(run.run_id).log_metrics({"test/x": 1.0})


@pytest.mark.parametrize(
    "failure",
    [
        "Max retries exceeded with url: /api/2.0/mlflow/runs/get (Caused by NewConnectionError('Failed to establish'))",
        # The server killed while it wrote its answer (seen in test_team_server's fault test).
        "('Connection broken: IncompleteRead(0 bytes read, 6301 more expected)', IncompleteRead(0 bytes read))",
    ],
)
def test_a_server_gone_or_gone_mid_answer_says_how_to_continue(failure):
    import requests

    with pytest.raises(TrackingError, match="did not answer") as raised, store.store_errors("http://127.0.0.1:9"):
        raise requests.ConnectionError(failure)
    assert "train.resume: true continues it" in str(raised.value)


_LATE_SERVER = """
import http.server, sys, time
time.sleep(1.5)  # like mlflow ui starting its workers: the port answers only now
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_make_ui_prints_its_url_only_once_the_server_answers(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", _LATE_SERVER, str(port)], cwd=tmp_path)
    try:
        assert store.wait_until_answers(server, port, timeout_s=30) >= 1.5
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()  # it answers now
    finally:
        server.kill()
        server.wait()
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(TrackingError, match="mlflow ui exited with status 3 before it answered"):
        store.wait_until_answers(gone, port, timeout_s=30)
