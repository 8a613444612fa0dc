"""Fixtures: a throw-away git copy of this repository with a tiny, fast params.yaml."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from families import TINY_FAMILIES

REPO = Path(__file__).resolve().parents[1]
MNIST_MIRROR = REPO.parent / "shared" / "datasets" / "mnist"

# The default experiment, shrunk so that a whole `dvc repro` takes seconds.
TINY = {
    **TINY_FAMILIES,
    "vae": {**TINY_FAMILIES["vae"], "iw_samples": 16},
    "train": {"epochs": 3, "batch_size": 128},
    "classifier": {"epochs": 2},
    "evaluate": {"num_samples": 100},
    "sample": {"n": 16, "interpolation_steps": 4, "interpolation_pairs": 2, "class_samples": 100},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Project:
    """A git + DVC copy of the repo in a temp dir, with helpers to run its commands."""

    def __init__(self, root: Path):
        self.root = root
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(root / "src"),  # the copy's own code, not the checkout's editable install
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
        }
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_EXPERIMENT_NAME", "GENLAB_ROOT", "DVC_EXP_NAME"):  # fmt: skip
            self.env.pop(var, None)

    def run(self, *cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(
            cmd, cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def run_queue(self, jobs: int = 2, timeout: float = 900) -> str:
        """`dvc queue start -j jobs`, then `dvc queue status` once no experiment is queued or running.

        Two workers started at once can lose one's control binding (kombu's filesystem transport creates
        the exchange file unlocked: dvc-task issue 73): that worker never hears the shutdown and idles
        forever after the queue is empty, its experiments done. So nothing waits on the workers' pipes,
        and workers still there half a minute after the queue emptied are stopped here."""
        with (self.root.parent / "queue-start.log").open("w") as log:
            subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=self.root, env=self.env, stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=120)  # fmt: skip
        deadline = time.time() + timeout
        while (status := self.run("dvc", "queue", "status").stdout) and ("Queued" in status or "Running" in status):
            if time.time() > deadline:
                raise AssertionError(f"queue still busy after {timeout} s:\n{status}")
            time.sleep(2)
        workers = []
        for record in (self.root / ".dvc/tmp/exps/celery").glob("*.json"):
            with contextlib.suppress(psutil.NoSuchProcess):
                workers.append(psutil.Process(json.loads(record.read_text())["pid"]))
        for worker in psutil.wait_procs(workers, timeout=30)[1]:
            print(f"queue worker {worker.pid} still running after the queue emptied: stopped (dvc-task issue 73)")
            worker.terminate()
        return status

    def stage(self, name: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, f"stages/{name}.py", check=check)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, override: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(merge(self.params(), override), sort_keys=False))

    def commit(self, message: str = "test") -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def mlflow(self):
        from mlflow import MlflowClient

        return MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")


def in_chromium(page: Path, script: str, settle_s: float = 0.0):
    """Open `page` in Debian's chromium (Playwright) with every request outside file:// refused, as on a machine
    without internet, and return what the JavaScript `script` (an expression) evaluates to there. Skips where
    chromium or Playwright is missing, except under CI (make test installs both where it can)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        missing = "Debian's chromium (apt install chromium)" if chromium is None else "playwright"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing")
        pytest.skip(f"needs {missing}")
    refused = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page()
        tab.route(re.compile(r"^(?!file:).*"), lambda route: (refused.append(route.request.url), route.abort()))
        tab.goto(page.as_uri(), wait_until="load")
        time.sleep(settle_s)
        result = tab.evaluate(script)
        browser.close()
    assert not refused, f"the page asked the network for {refused}"
    return result


def assert_one_point_per_step(client, run, epochs: int) -> None:
    """Every per-epoch metric of an MLflow run has exactly one point at each step 1..epochs."""
    for key in run.data.metrics:
        if not key.startswith("test/"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), key


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny networks: a busy CPU's thread pool costs them more than
    their compute (100x seen on the shared 2-core machines)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The default dataset (scikit-learn's digits), prepared once per test session."""
    from genlab.config.experiment import config_from_dict
    from genlab.data import load_prepared, prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(config_from_dict({}), out)
    return load_prepared(out)


def _tiny_copy(root: Path) -> Project:
    for rel in _tracked_files():
        if rel.startswith(("metrics/", "bench/", "docs/")):
            continue  # outputs of the committed experiment and prose are not needed
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    (root / "dvc.lock").unlink(missing_ok=True)
    proj = Project(root)
    proj.set_params(TINY)
    proj.run("git", "init", "-q", "-b", "main")
    proj.commit("tiny copy")
    return proj


@pytest.fixture
def project(tmp_path) -> Project:
    """A fresh copy of the repository with the tiny params, nothing run yet."""
    return _tiny_copy(tmp_path / "repo")


@pytest.fixture(scope="session")
def _reproduced_once(tmp_path_factory) -> Path:
    """The tiny experiment's first `dvc repro` (what it printed: `repro_output`), then its results committed."""
    proj = _tiny_copy(tmp_path_factory.mktemp("reproduced") / "repo")
    (proj.root.parent / "repro.out").write_text(proj.run("dvc", "repro").stdout)
    proj.commit("baseline results")
    return proj.root


@pytest.fixture
def repro_output(_reproduced_once) -> str:
    """What the first `dvc repro` of `reproduced` printed."""
    return (_reproduced_once.parent / "repro.out").read_text()


@pytest.fixture
def reproduced(_reproduced_once, tmp_path) -> Project:
    """A copy of the tiny experiment after `dvc repro` with its results committed, as `project` would be after
    those two steps: the repro runs once per session, each test gets its own copy (git, DVC cache, outputs and
    the MLflow store, whose artifact locations are pointed at the copy)."""
    from genlab.tracking.store import relocate

    root = tmp_path / "repo"
    # DVC's tmp/ holds the first run's locks and queue state, none of it part of the result
    skip = lambda folder, names: ["tmp"] if Path(folder) == _reproduced_once / ".dvc" else []  # noqa: E731
    shutil.copytree(_reproduced_once, root, symlinks=True, ignore=skip)
    assert relocate(root) > 0
    return Project(root)
