"""Reading params.yaml (issue 23 items 1, 2, 5, 17): genlab reads what DVC reads, every edit reruns
validate, an unreadable file is a clear error, and a stage run by DVC refuses params.yaml that changed
after validate read it (another `dvc exp run -S` in the same workspace)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml

from genlab.config import params_guard
from genlab.config.experiment import load_config
from genlab.config.params_file import parse_params
from genlab.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
COMMITTED = (REPO / "params.yaml").read_text()

# Scalars that YAML 1.1 (PyYAML) and YAML 1.2 (ruamel.yaml, DVC's reader) read differently, and more.
SCALARS = ["010", "0o10", "08", "1:40", "-1:30:00", "yes", "No", "on", "OFF", "y", "n", ".inf", "-.Inf", ".nan",
           "1e3", "1E-3", "+1", "0x1F", "1_000", "0b11", "~", "Null", "True", "2020-01-01", "1.", ".5"]  # fmt: skip


def _params(tmp_path: Path, old: str, new: str) -> Path:
    assert old in COMMITTED
    path = tmp_path / "params.yaml"
    path.write_text(COMMITTED.replace(old, new, 1))
    return path


@pytest.mark.parametrize("scalar", SCALARS)
def test_params_are_read_as_dvc_reads_them(scalar):
    from dvc.utils.serialize._yaml import parse_yaml

    text = f"a: {scalar}\nb: [{scalar}]\n"
    ours, dvcs = parse_params(text), parse_yaml(text, "params.yaml")
    assert repr(ours) == repr(dvcs)  # repr: nan == nan is False, and 1 == 1.0 == True would hide a type


def test_seed_010_is_ten_and_a_sexagesimal_epoch_count_is_refused(tmp_path):
    assert load_config(_params(tmp_path, "seed: 0 ", "seed: 010 ")).seed == 10  # PyYAML: 8; DVC: 10
    with pytest.raises(ConfigError, match=r"'train\.epochs' = '1:40' is invalid: expected an integer"):
        load_config(_params(tmp_path, "epochs: null", "epochs: 1:40"))  # PyYAML: 100


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("compile: false", "compile: 0", "train.compile"),
        ("resume: false", "resume: 0", "train.resume"),
        ("channels: 1 ", "channels: true ", "data.channels"),
        ("epochs: null", "epochs: 100.0", "train.epochs"),
        ("lr: 0.001 ", 'lr: "1e-3" ', "vae.lr"),
        ("latent_dim: 20", "latent_dim: yes", "vae.latent_dim"),
    ],
)
def test_a_value_of_another_type_that_dvc_calls_equal_is_refused(tmp_path, old, new, key):
    with pytest.raises(ConfigError, match=rf"'{key}' = .* is invalid: expected"):
        load_config(_params(tmp_path, old, new))


def test_every_edit_of_params_yaml_reruns_validate(tmp_path, monkeypatch):
    """DVC compares params with ==, so 0 for false is no change to it; the file dep's md5 is."""
    from dvc.repo import Repo

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["validate"]
    monkeypatch.chdir(tmp_path)
    Repo.init(no_scm=True).close()
    Path("params.yaml").write_text("train:\n  compile: false\n")
    deps = [d for d in stage["deps"] if d == "params.yaml"]  # the validate stage's own definition
    Path("dvc.yaml").write_text(yaml.safe_dump({"stages": {"validate": {"cmd": "true", "deps": deps,
                                                                        "params": stage["params"]}}}))  # fmt: skip
    with Repo() as repo:
        repo.reproduce()
        Path("params.yaml").write_text("train:\n  compile: 0\n")
        assert repo.status() != {}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory: it must be a YAML file"),
        (lambda p: p.write_bytes(b"seed: 0\ndevice: caf\xe9\n"), r"is not UTF-8 text \(byte 0xe9 on line 2\)"),
        (lambda p: p.write_bytes(b"#" * (2 << 20)), "is 2097152 bytes: a params file is at most 1 MiB"),
        (lambda p: p.symlink_to(p.parent / "gone.yaml"), "not found"),
    ],
)
def test_an_unreadable_params_file_is_a_clear_error(tmp_path, make, message):
    path = tmp_path / "params.yaml"
    make(path)
    with pytest.raises(ConfigError, match=rf"params file .*params\.yaml {message}"):
        load_config(path)


def test_a_key_set_twice_is_refused_naming_it_and_its_line(tmp_path):
    """PyYAML kept the second value without a word; DVC refuses the file."""
    path = _params(tmp_path, "  epochs: null", "  epochs: 100\n  epochs: 5")
    with pytest.raises(ConfigError, match=r'sets a key twice: found duplicate key "epochs" .* on line \d+; keep one'):
        load_config(path)


@pytest.mark.parametrize(
    ("old", "new", "shown"),
    [
        ("  epochs: null", '  "epochs ": 100', r"'train\.epochs '"),  # a trailing space, invisible unquoted
        ("  epochs: null", "  epochs: 100\n  1: 100", r"train\.1 \(YAML type int, not a string\)"),  # was a TypeError
        ("  epochs: null", "  ~: 100", r"train\.None \(YAML type NoneType"),
    ],
)
def test_an_odd_key_is_named_so_that_the_user_can_see_it(tmp_path, old, new, shown):
    with pytest.raises(ConfigError, match=rf"unknown params key\(s\) {shown}"):
        load_config(_params(tmp_path, old, new))


# --- issue 23.17: params.yaml rewritten under a running experiment ------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A git repo with params.yaml and validated/, as a stage run by DVC sees it."""
    monkeypatch.chdir(tmp_path)
    for var in ("DVC_EXP_NAME", "GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_STAGE", "train")
    Path("validated").mkdir()
    Path("params.yaml").write_text(COMMITTED)
    return tmp_path


def test_a_stage_run_by_dvc_refuses_params_changed_since_validate_and_names_the_keys(workspace):
    params_guard.record(COMMITTED)
    params_guard.check()  # unchanged: passes
    Path("params.yaml").write_text(COMMITTED.replace("beta: 1.0 ", "beta: 2.0 "))
    with pytest.raises(ConfigError, match=r"changed after the validate stage read it: vae\.beta: 1\.0 -> 2\.0") as info:
        load_config("params.yaml")  # every stage's reader checks; train calls check() again before its outputs
    assert "--queue" in str(info.value) and "--temp" in str(info.value)


def test_a_stage_run_by_dvc_fails_at_its_end_when_params_changed_while_it_ran(workspace, capsys):
    from genlab.pipeline.stage import run_stage

    params_guard.record(COMMITTED)
    edit = lambda: Path("params.yaml").write_text(COMMITTED.replace("epochs: null", "epochs: 5"))  # noqa: E731
    with pytest.raises(SystemExit) as info:
        run_stage(edit)  # e.g. a second `dvc exp run -S train.epochs=5` while this stage trained
    assert info.value.code == 2
    assert "train.epochs: null -> 5" in capsys.readouterr().err


def test_the_guard_leaves_stages_run_by_hand_alone_and_needs_validate_under_dvc(workspace, monkeypatch):
    with pytest.raises(ConfigError, match=r"validated/params\.json .* is missing.*dvc repro validate"):
        params_guard.check()
    monkeypatch.delenv("DVC_STAGE")
    assert load_config("params.yaml").vae.beta == 1.0  # by hand: no validate run to agree with


def _git(*args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, env=env).stdout.strip()


def _stash(name: str, text: str) -> None:
    """What DVC's workspace executor holds while experiment `name` runs: its stash commit at EXEC_MERGE."""
    Path("params.yaml").write_text(text)
    _git("add", "params.yaml")
    tree = _git("write-tree")
    head = _git("rev-parse", "HEAD")
    commit = _git("commit-tree", tree, "-p", head, "-m", f"dvc-exp:{head}:{head}:{name}")
    _git("update-ref", params_guard.EXEC_MERGE, commit)


def test_validate_refuses_params_that_are_not_the_experiments_own(workspace, monkeypatch):
    _git("init", "-q")
    _git("add", "params.yaml")
    _git("commit", "-q", "-m", "base")
    half = COMMITTED.replace("beta: 1.0 ", "beta: 0.5 ")
    _stash("exp-half", half)
    monkeypatch.setenv("DVC_STAGE", "validate")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-half")
    params_guard.check_experiment(half)  # its own params: passes
    with pytest.raises(ConfigError, match=r"not what experiment 'exp-half' was started with: vae\.beta: 0\.5 -> 2\.0"):
        params_guard.check_experiment(COMMITTED.replace("beta: 1.0 ", "beta: 2.0 "))
    _stash("exp-two", COMMITTED.replace("beta: 1.0 ", "beta: 2.0 "))  # the second `dvc exp run -S` took over
    with pytest.raises(ConfigError, match=r"experiment 'exp-two' was started in this workspace while 'exp-half'"):
        params_guard.check_experiment(half)
    _git("update-ref", "-d", params_guard.EXEC_MERGE)  # ... and its failed start cleaned DVC's refs away
    with pytest.raises(ConfigError, match=r"EXEC_MERGE\) is gone"):
        params_guard.check_experiment(half)


def test_changed_keys_names_each_difference_once():
    before = params_guard.flatten({"a": {"b": 1, "c": [1, 2]}, "d": math.pi})
    after = params_guard.flatten({"a": {"b": 1, "c": [1, 3]}, "e": None})
    assert params_guard.changed_keys(before, after) == ["a.c: [1, 2] -> [1, 3]", f"d: {math.pi} -> <none>",
                                                         "e: <none> -> null"]  # fmt: skip


@pytest.mark.slow
def test_a_second_exp_run_in_the_workspace_stops_the_first_instead_of_training_it_on_its_params(project):
    """Issue 23.17 for real (about 20 s): `-S vae.beta=2` rewrites params.yaml under the running β = 0.5."""
    first = project.popen("dvc", "exp", "run", "-S", "vae.beta=0.5")
    for line in first.stdout:  # DVC's executor has taken the workspace: the second run now races it
        if line.startswith("Reproducing experiment"):
            break
    second = project.run("dvc", "exp", "run", "-S", "vae.beta=2", check=False)
    out = first.stdout.read()
    assert first.wait(timeout=300) != 0, out
    assert "To run variants side by side" in out and "--queue" in out and "--temp" in out, out
    assert second.returncode != 0, second.stdout  # DVC refuses it: "... is busy"
    assert not (project.root / "models" / "model.pt").exists()  # nothing trained on either's params


def fake_processes(monkeypatch, processes):
    """psutil.process_iter yielding {pid: (parent, argv)}."""
    import types

    import psutil

    table = [
        types.SimpleNamespace(pid=pid, info={"ppid": ppid, "cmdline": argv}) for pid, (ppid, argv) in processes.items()
    ]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: iter(table))


def test_other_stages_counts_each_other_run_once_and_not_this_one(monkeypatch):
    import os

    from genlab.core.runtime import other_stages

    me, py = os.getpid(), "/repo/.venv/bin/python"
    fake_processes(
        monkeypatch,
        {
            1: (0, ["/sbin/init"]),
            100: (1, ["dvc", "exp", "exec-run"]),  # a queued experiment: dvc, its shell, the stage's python
            101: (100, ["/bin/sh", "-c", "python stages/train.py"]),
            102: (101, [py, "stages/train.py"]),
            200: (1, [py, "-m", "torch.distributed.run", "--nproc-per-node", "2", "stages/evaluate.py"]),
            201: (200, [py, "-u", "stages/evaluate.py"]),  # its workers count as the one run
            202: (200, [py, "-u", "stages/evaluate.py"]),
            300: (1, ["vim", "stages/train.py"]),  # not a python: not a stage
            301: (1, None),  # another user's process: its command line unreadable
            400: (1, [py, "-m", "torch.distributed.run", "stages/train.py"]),  # this process's own run
            me: (400, [py, "-u", "stages/train.py"]),
            401: (400, [py, "-u", "stages/train.py"]),
        },
    )
    assert other_stages() == {102: "stages/train.py", 200: "stages/evaluate.py"}
    fake_processes(monkeypatch, {})
    assert other_stages() == {}


def test_threads_null_says_so_when_other_stages_share_the_cores(monkeypatch, capsys):
    import torch

    from genlab.core import runtime

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "other_stages", lambda: {102: "stages/train.py"})
    try:
        torch.set_num_threads(2)
        runtime.use_threads(None)
        out = capsys.readouterr().out
        assert "2 threads on 2 cores" in out and "stages/train.py, pid 102" in out and "-S threads=1" in out, out
        runtime.use_threads(1)  # the user's count: nothing to say
        runtime.use_threads(None)  # one thread beside one other stage: two threads on two cores
        monkeypatch.setattr(runtime, "other_stages", dict)
        torch.set_num_threads(2)
        runtime.use_threads(None)  # alone
        assert capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)


def test_threads_is_null_or_a_positive_count_and_sets_torchs_threads(tmp_path):
    import torch

    from genlab.core.runtime import use_threads

    params = tmp_path / "params.yaml"
    params.write_text(COMMITTED)
    assert load_config(params).threads is None
    for bad in (0, -1, 1.5, "two"):
        with pytest.raises(ConfigError, match="threads"):
            load_config(params, {"threads": bad})
    before = torch.get_num_threads()
    try:
        use_threads(load_config(params, {"threads": 1}).threads)
        assert torch.get_num_threads() == 1
        use_threads(None)  # null keeps what is set
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
