"""The CI rerun's two checks: bit-exact determinism on one machine kind, seed bands across kinds."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

import pytest
import torch

from genlab.core import paths
from genlab.core.machine import describe, fingerprint, tags
from genlab.pipeline.reproduce import band_failures, checked_numbers, history_epochs, make_bands

HISTORY = "epoch,train_elbo,val_elbo,val_domain_fid\n1,-30.5,-31.0,\n2,-25.0,-26.0,12.5\n3,-24.0,-25.5,\n"
FILES = paths.MODEL_FILES


def _expected(bands, k=4.0, seeds=5):
    return {"how": {"k": k, "seeds": list(range(seeds)), "history_epochs": [1, 3]}, "bands": bands}


def test_bands_are_mean_plus_minus_k_sample_sd_over_the_seeds():
    runs = [{"a": v, "const": 3.0} for v in (1.0, 2.0, 4.0, 5.0, 8.0)]
    bands = make_bands(runs, k=2.0)
    sd = statistics.stdev([1.0, 2.0, 4.0, 5.0, 8.0])
    assert bands["a"]["mean"] == pytest.approx(4.0) and bands["a"]["sd"] == pytest.approx(sd)
    assert (bands["a"]["low"], bands["a"]["high"]) == pytest.approx((4.0 - 2 * sd, 4.0 + 2 * sd))
    assert bands["const"] == {"mean": 3.0, "sd": 0.0, "low": 3.0, "high": 3.0}
    assert "only_here" not in make_bands([{"a": 1.0}, {"a": 2.0, "only_here": 1.0}], k=1.0)


def test_a_number_outside_its_band_is_named_with_its_distance_band_and_sd():
    expected = _expected({"eval:test.elbo": {"mean": -90.0, "sd": 0.5, "low": -92.0, "high": -88.0}})
    failures, _ = band_failures(expected, {"eval:test.elbo": -93.0})
    (line,) = failures
    assert "eval:test.elbo = -93 is outside its band [-92, -88] by 1 (2.0 sd)" in line
    assert "mean -90 ± 4 × sd 0.5 over 5 seeds" in line
    assert band_failures(expected, {"eval:test.elbo": -88.0}) == ([], [])


def test_constants_must_match_exactly_and_missing_numbers_fail():
    expected = _expected(
        {
            "eval:test.iw_samples": {"mean": 1000.0, "sd": 0.0, "low": 1000.0, "high": 1000.0},
            "eval:test.kl": {"mean": 9.0, "sd": 1.0, "low": 5.0, "high": 13.0},
        }
    )
    failures, _ = band_failures(expected, {"eval:test.iw_samples": 999.0})
    assert any("expected exactly 1000.0 (the same in all 5 seed runs)" in f for f in failures)
    assert any("eval:test.kl: missing from the rerun" in f for f in failures)


def test_numbers_without_a_band_are_listed_unchecked_never_failed():
    expected = _expected({"eval:test.kl": {"mean": 9.0, "sd": 1.0, "low": 5.0, "high": 13.0}})
    failures, unchecked = band_failures(expected, {"eval:test.kl": 9.5, "eval:test.new_metric": 1e9})
    assert failures == [] and unchecked == ["eval:test.new_metric"]


def test_history_is_compared_at_a_few_epochs_and_empty_cells_are_skipped():
    assert history_epochs(100) == [1, 10, 25, 50, 100]
    assert history_epochs(3) == [1, 2, 3]
    texts = {FILES.history: HISTORY, FILES.train_metrics: json.dumps({"epochs": 3, "val": {"elbo": -25.5}})}
    got = checked_numbers(texts, [1, 2])
    assert got == {
        "metrics/train_history.csv:epoch1.train_elbo": -30.5,
        "metrics/train_history.csv:epoch1.val_elbo": -31.0,
        "metrics/train_history.csv:epoch2.train_elbo": -25.0,
        "metrics/train_history.csv:epoch2.val_elbo": -26.0,
        "metrics/train_history.csv:epoch2.val_domain_fid": 12.5,
        "metrics/train.json:epochs": 3.0,
        "metrics/train.json:val.elbo": -25.5,
    }


def test_fingerprint_names_what_picks_the_kernels(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    fp = fingerprint(torch.device("cpu"))
    assert fp["threads"] == torch.get_num_threads() and fp["torch"] == torch.__version__
    assert fp["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fp["kernel_env"] == {"MKL_CBWR": "COMPATIBLE"} and fp["device"] == "cpu" and "gpu" not in fp
    assert all(re.fullmatch(r"sse4_2|avx|avx2|fma|f16c|avx_vnni|avx512.*|amx.*", f) for f in fp["isa"])
    flat = tags(fp)
    assert flat["machine.kernel_env"] == "MKL_CBWR=COMPATIBLE" and flat["machine.threads"] == str(fp["threads"])
    assert f"{fp['aten_capability']} kernels" in describe(fp) and "MKL_CBWR=COMPATIBLE" in describe(fp)


# The default MLP for 10 epochs: long enough for another kernel path to move the numbers, short enough for CI.
DRIFTING = {"vae": {"hidden": [512, 256], "latent_dim": 20}, "train": {"epochs": 10, "batch_size": 64}}


def _reproduce(project, *args, env=None):
    old = dict(project.env)
    project.env.update(env or {})
    try:
        return project.run(sys.executable, "-m", "genlab.pipeline.reproduce", *args, check=False, timeout=900)
    finally:
        project.env = old


@pytest.mark.slow
def test_bands_pass_another_kernel_path_and_fail_a_doubled_lr(project):
    project.set_params(DRIFTING)
    project.run("dvc", "repro")
    committed = {p: (project.root / p).read_text() for p in (FILES.history, FILES.eval_metrics)}
    machine = json.loads((project.root / FILES.machine).read_text())
    project.commit("the committed experiment")
    built = _reproduce(project, "expected", "--seeds", "5")
    assert built.returncode == 0, built.stdout + built.stderr
    # Same machine kind: the clone's rerun of the committed seed equals the committed files byte for byte.
    assert "seed 0 is the committed run: byte-identical to the committed metrics" in built.stdout
    expected = json.loads((project.root / paths.EXPECTED).read_text())
    assert expected["how"]["seeds"] == [0, 1, 2, 3, 4] and expected["how"]["k"] == 4
    assert "metrics/eval.json:test.precision" in expected["bands"]  # sample-based metrics get bands too
    project.commit("seed bands")

    # Another machine kind, simulated honestly: ATen's generic kernels instead of this CPU's SIMD ones.
    if machine["aten_capability"] == "DEFAULT":
        pytest.skip("this CPU already runs ATen's generic kernels")
    other = _reproduce(project, env={"ATEN_CPU_CAPABILITY": "default"})
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"aten_capability '{machine['aten_capability']}' -> 'DEFAULT'" in other.stdout
    changed = [p for p, text in committed.items() if (project.root / p).read_text() != text]
    assert changed, "the other kernel path left every number unchanged: the test proves nothing"
    assert "determinism (two reruns on this machine): passed" in other.stdout
    assert re.search(r"reproduction \(bands of 5 seeds.*\): passed", other.stdout), other.stdout

    # A real change (lr x 2) on the same machine must leave its bands, and say by how much.
    subprocess.run(["git", "checkout", "-q", "--", "metrics"], cwd=project.root, check=True)
    project.set_params({"vae": {"lr": 0.002}})
    project.commit("lr x 2 without refreshing metrics")
    doubled = _reproduce(project)
    assert doubled.returncode == 1, doubled.stdout + doubled.stderr
    assert re.search(r"outside its band \[.+\] by .+ sd\); band = mean .+ ± 4 × sd .+ over 5 seeds", doubled.stdout), (
        doubled.stdout
    )
    assert "reproduction (bands of 5 seeds" in doubled.stdout and "FAILED" in doubled.stdout
    assert "determinism (rerun vs the committed run (same machine kind)): FAILED" in doubled.stdout


def test_a_rerun_that_leaves_changes_fails_on_the_same_machine_kind_and_lists_drift_on_another():
    from genlab.pipeline.reproduce import leftover_changes

    porcelain = "M  dvc.lock\n M metrics/eval.json\n?? stray.txt\n"
    assert leftover_changes("", same_kind=True) == ([], [])
    assert leftover_changes(porcelain, same_kind=True) == (["M  dvc.lock", " M metrics/eval.json", "?? stray.txt"], [])
    # Another machine kind: its numbers (and their md5s in dvc.lock) legitimately differ; nothing else may.
    assert leftover_changes(porcelain, same_kind=False) == (["?? stray.txt"], ["M  dvc.lock", " M metrics/eval.json"])


def test_a_stale_lock_names_the_tracked_code_it_was_not_made_with():
    """CI's first step: dvc.lock must record the commit's code and params; absent outputs and data are no fault."""
    from genlab.pipeline.reproduce import stale_lock

    status = {  # `dvc status --json dvc.yaml` of a fresh clone whose code changed after the last dvc repro
        "validate": [{"changed deps": {"src/genlab": "modified"}}, {"changed outs": {"validated": "deleted"}}],
        "train": [
            {"changed deps": {"validated/train.yaml": "deleted", "params.yaml": "modified", "data/x": "modified"}},
            {"changed outs": {"models/model.pt": "not in cache"}},
        ],
        "sample": [{"changed deps": {"data/prepared": "deleted"}}],
        "evaluate": ["changed checksum"],
    }
    tracked = {"src/genlab", "src", "params.yaml", "stages/train.py"}  # data/x: an untracked input, DVC's own
    assert stale_lock(status, tracked) == ["validate: src/genlab", "train: params.yaml"]
    assert stale_lock({}, tracked) == []


def test_a_forced_rerun_trains_instead_of_restoring_the_last_finished_run(tmp_path, monkeypatch):
    """genlab.training.resume restores a finished run's outputs when DVC reruns train on the same inputs; the second
    rerun of the determinism check must train, or two reruns agree only because one copied the other."""
    import genlab.pipeline.reproduce as reproduce

    monkeypatch.chdir(tmp_path)
    marker = FILES.training_run
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"run_id": "r", "finished": True, "inputs": "x"}))
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: calls.append((cmd, marker.exists())))
    reproduce._repro()
    assert calls == [(["dvc", "repro", "--force"], False)]
    marker.write_text(json.dumps({"run_id": "killed"}))  # an unfinished run: its checkpoint is to resume
    reproduce._repro()
    assert calls[-1] == (["dvc", "repro", "--force"], True)


def test_the_git_dirty_tag_ignores_what_the_pipeline_writes(tmp_path):
    from genlab.tracking.store import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for rel in ("dvc.lock", "metrics/eval.json", "pipelines/tokens/dvc.lock", "src/model.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("committed\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x")
    for rel in ("dvc.lock", "metrics/eval.json", "pipelines/tokens/dvc.lock"):  # DVC rewrites these mid-pipeline
        (tmp_path / rel).write_text("rewritten\n")
    assert git_state(tmp_path / "pipelines")[1] is False
    (tmp_path / "src/model.py").write_text("edited\n")
    assert git_state(tmp_path)[1] is True
