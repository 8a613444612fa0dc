"""genlab.training.resume: which checkpoint a train start continues or restores, without a tracking store."""

from __future__ import annotations

import json

from genlab.core import paths
from genlab.training import resume


def test_an_unreadable_finished_checkpoint_is_skipped_not_an_error(tmp_path, monkeypatch, capsys):
    """A kill after training but before dvc.lock makes DVC rerun train, which restores the finished run from
    its checkpoint. A torn or foreign file there must not block every retrain until it is deleted by hand."""
    monkeypatch.chdir(tmp_path)
    where = paths.model_paths()
    where.checkpoint.parent.mkdir(parents=True)
    where.checkpoint.write_bytes(b"PK\x03\x04 truncated")
    where.training_run.write_text(json.dumps({"run_id": "r", "finished": True, "inputs": "same"}))
    assert resume.finished_state(where, "same") is None
    out = capsys.readouterr().out
    assert f"checkpoint {where.checkpoint} is corrupted" in out and "training afresh" in out
