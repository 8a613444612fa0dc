"""kill -9 of `dvc repro` at random moments, then `dvc repro` again: is anything lost, torn or duplicated?

A tiny default experiment (VAE on digits, 30 epochs, train.resume: true) in a clone of this repository,
with its download/classifier/perceptual stages already run. Each trial copies that workspace, starts
`dvc repro` (train -> evaluate -> sample) in its own process group and SIGKILLs the whole group:

  random      at a uniform moment of an uninterrupted run's duration (the stage running is recorded)
  evaluate    at a uniform moment of the first 3 s after train finished (evaluate is running)
  sample      at a uniform moment of the first 3 s after evaluate finished (sample is running)
  checkpoint  as soon as a checkpoint's temporary file exists (mid-checkpoint write)
  mlflow      as soon as SQLite's journal of mlflow.db exists (mid-MLflow write)

then runs `dvc repro` to the end and checks: metrics/train.json, train_history.csv and eval.json
byte-identical to the uninterrupted run; the final MLflow run FINISHED with one point per epoch per metric
and its test metrics; no run left RUNNING; every output readable (model file, prepared data, JSON, PNG).
Prints one row per trial and the totals (docs/reliability.md).

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/faults.py   # 12 random, 4 + 4 in evaluate/sample, 3 + 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "faults"
TINY = {
    "vae": {"hidden": [16, 8], "latent_dim": 3, "channels": [4, 8], "iw_samples": 16},
    "train": {"epochs": 30, "batch_size": 128, "resume": True},
    "classifier": {"epochs": 2},
    "perceptual": {"epochs": 2},
    "evaluate": {"num_samples": 100},
    "sample": {"n": 16, "interpolation_steps": 4, "interpolation_pairs": 2, "class_samples": 100},
}
COMPARED = ("metrics/train.json", "metrics/train_history.csv", "metrics/eval.json")


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def env(where: Path) -> dict[str, str]:
    return {**ENV, "PYTHONPATH": str(where / "src")}  # the workspace's own code, not the editable install's


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "PYTHONPATH")}
ENV["PATH"] = str(Path(sys.executable).parent) + os.pathsep + ENV.get("PATH", "")


def template(name: str = "template") -> Path:
    """A clone of HEAD with the tiny params and its upstream stages run (shared by every trial)."""
    where = OUT / name
    shutil.rmtree(where, ignore_errors=True)
    run(REPO, "git", "clone", "-q", str(REPO), str(where))
    params = yaml.safe_load((where / "params.yaml").read_text())
    (where / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    (where / "dvc.lock").unlink(missing_ok=True)
    for path in ("metrics", "samples"):
        shutil.rmtree(where / path, ignore_errors=True)
    run(where, "git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "tiny")
    run(where, "dvc", "repro", "classifier", "perceptual")
    return where


def trial_dir(name: str, base: Path) -> Path:
    where = OUT / name
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(base, where, symlinks=True)
    return where


def start(where: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["dvc", "repro"], cwd=where, env=env(where), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL the whole process group (dvc and the stage's python); the output it printed."""
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    return out


def stage_at_kill(out: str) -> str:
    stages = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    return stages[-1] if stages else "(before any stage)"


def wait_for(proc: subprocess.Popen, ready, timeout: float) -> bool:
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            return True
        time.sleep(0.001)
    return False


def readable(where: Path) -> list[str]:
    """Outputs that do not load."""
    from PIL import Image

    from genlab.core import checkpoint
    from genlab.data import load_prepared

    bad = []
    checks = [
        ("models/model.pt", lambda p: checkpoint.load(p)),
        ("data/prepared", lambda p: load_prepared(p)),
        *((p, lambda p: json.loads(Path(p).read_text())) for p in ("metrics/train.json", "metrics/eval.json")),
        *((str(p.relative_to(where)), lambda p: Image.open(p).load()) for p in (where / "samples").glob("*.png")),
    ]
    for rel, load in checks:
        try:
            load(where / rel)
        except Exception as exc:  # any failure to load is a torn or missing output
            bad.append(f"{rel}: {type(exc).__name__}")
    return bad


def mlflow_state(where: Path, epochs: int) -> tuple[str, int, bool, str]:
    """(final run status, runs left RUNNING, one point per epoch per metric, runs in all with their statuses)."""
    from mlflow import MlflowClient

    from genlab.data.checksums import md5_file
    from genlab.evaluation.model_file import MODEL_MD5_TAG

    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("genlab").experiment_id
    runs = client.search_runs([experiment])
    model_md5 = md5_file(where / "models/model.pt")  # the train run is found by its model file, as evaluate does
    final = client.search_runs(
        [experiment], f"tags.`{MODEL_MD5_TAG}` = '{model_md5}'", order_by=["attributes.start_time DESC"]
    )[0].info.run_id
    run_ = client.get_run(final)
    single = all(
        sorted(m.step for m in client.get_metric_history(final, key)) == list(range(1, epochs + 1))
        for key in run_.data.metrics
        if not key.startswith("test/")
    ) and any(key.startswith("test/") for key in run_.data.metrics)
    statuses = sorted(r.info.status for r in runs)
    counted = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    return run_.info.status, statuses.count("RUNNING"), single, f"{len(runs)} ({counted})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=int, default=12, help="kills at uniform random moments")
    parser.add_argument("--evaluate", type=int, default=4, help="kills while evaluate runs")
    parser.add_argument("--sample", type=int, default=4, help="kills while sample runs")
    parser.add_argument("--checkpoint", type=int, default=3, help="kills during a checkpoint write")
    parser.add_argument("--mlflow", type=int, default=3, help="kills during an MLflow (SQLite) write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    rng = random.Random(args.seed)
    base = template()
    epochs = TINY["train"]["epochs"]

    reference = trial_dir("reference", base)
    began = time.perf_counter()
    run(reference, "dvc", "repro")
    duration = time.perf_counter() - began
    expected = {p: (reference / p).read_bytes() for p in COMPARED}
    print(f"uninterrupted dvc repro (train, evaluate, sample): {duration:.1f} s")
    columns = (
        "kill | stage killed | metrics same | final run | RUNNING left | 1 point per epoch | runs (status) | unreadable"
    )
    print(f"| # | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")

    kinds = [k for k in ("random", "evaluate", "sample", "checkpoint", "mlflow") for _ in range(getattr(args, k))]
    after = {"evaluate": "metrics/train.json", "sample": "metrics/eval.json"}  # written as the stage before ends
    totals = {"trials": 0, "survived": 0, "lost": 0}
    for i, kind in enumerate(kinds, 1):
        where = trial_dir(f"trial{i}", base)
        proc = start(where)
        if kind == "random":
            wait_for(proc, lambda: False, rng.uniform(0, duration))
            hit = proc.poll() is None
        elif kind in after:
            hit = wait_for(proc, lambda w=where, k=kind: (w / after[k]).exists(), duration * 2)
            hit = hit and not wait_for(proc, lambda: False, rng.uniform(0, 3)) and proc.poll() is None
        elif kind == "checkpoint":
            hit = wait_for(proc, lambda w=where: any((w / "checkpoints").glob(".train.pt.*.tmp")), duration * 2)
        else:
            hit = wait_for(proc, lambda w=where: (w / "mlflow.db-journal").exists(), duration * 2)
        if not hit:
            proc.communicate()
            print(f"| {i} | {kind} | (finished before the kill) | - | - | - | - | - | - |")
            continue
        killed_output = kill(proc)
        stage = stage_at_kill(killed_output)
        try:
            rerun = subprocess.run(["dvc", "repro"], cwd=where, env=env(where), capture_output=True, text=True)
            (OUT / f"trial{i}.log").write_text(f"{killed_output}\n--- rerun ---\n{rerun.stdout}\n{rerun.stderr}")
            if rerun.returncode != 0:
                raise RuntimeError(f"dvc repro failed again (log: bench/out/faults/trial{i}.log)")
            same = all((where / p).read_bytes() == expected[p] for p in COMPARED)
            status, running, single, n_runs = mlflow_state(where, epochs)
            bad = readable(where)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            same, status, running, single, n_runs, bad = False, "-", "-", False, "-", [str(exc).splitlines()[0]]
        ok = same and status == "FINISHED" and running == 0 and single and not bad
        totals["trials"] += 1
        totals["survived" if ok else "lost"] += 1
        print(
            f"| {i} | {kind} | {stage} | {'yes' if same else 'NO'} | {status} | {running} | "
            f"{'yes' if single else 'NO'} | {n_runs} | {', '.join(bad) or 'none'} |"
        )
        if ok:  # a failed trial's workspace stays for a look
            shutil.rmtree(where, ignore_errors=True)
    print(f"faults injected: {totals['trials']}, survived: {totals['survived']}, lost or wrong: {totals['lost']}")


if __name__ == "__main__":
    main()
