"""The MLflow store: it survives moving the repository; a run is closed even when a stop signal interrupts."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from genlab import tracking


def test_a_moved_store_still_serves_its_images(tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(old))
    tracker = tracking.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")
    tracker.log_images({"samples": torch.rand(4, 1, 8, 8)}, step=1)
    tracker.finish()
    shutil.move(old, new)
    monkeypatch.setenv("GENLAB_ROOT", str(new))
    assert tracking.relocate() > 0 and tracking.relocate() == 0  # once: then nothing points elsewhere
    client = tracking.attach(tracker.run_id).client
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
    assert tracking.relocate() == 0
    tracker = tracking.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")
    tracker.finish()
    assert tracking.attach(tracker.run_id).client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_stop_signal_during_the_closing_write_still_marks_the_run(tmp_path, monkeypatch):
    """torchrun's SIGTERM reached rank 0 while it marked its run FAILED after a dead peer: the run stayed RUNNING."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENLAB_ROOT", str(tmp_path))
    tracker = tracking.MlflowTracker.create({"seed": 0}, {"genlab.family": "vae"}, run_name="t")
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
    assert tracking.attach(tracker.run_id).client.get_run(tracker.run_id).info.status == "FAILED"
