"""The team tracking server (MLflow) or its PostgreSQL killed while `dvc repro train` tracks into it.

Starts genlab.tracking.server (PostgreSQL + MLflow with basic-auth) on free loopback ports, then runs the tiny default
experiment of bench/faults.py (VAE on digits, train.resume: true) against it, once uninterrupted and then once
per trial, each trial in its own MLflow experiment:

  mlflow     the MLflow server's process group SIGKILLed at a uniform moment of training, back after 2-20 s
  postgres   PostgreSQL stopped in immediate mode (a crash: no shutdown checkpoint) likewise, back after 2-20 s
  long       the MLflow server killed with the client's retries cut to one (an outage longer than they last):
             train stops with an error; the server comes back and `dvc repro` is run again

and checks: train.json and train_history.csv byte-identical to the uninterrupted run; the experiment holds one
run, FINISHED, with one point per epoch per metric; no run left RUNNING. Prints one row per trial and totals
(docs/reliability.md).

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/server_faults.py   # 5 mlflow, 5 postgres, 3 long
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from faults import OUT, env, template, trial_dir

from genlab.tracking.server import Server

COMPARED = ("metrics/train.json", "metrics/train_history.csv")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlflow", type=int, default=5)
    parser.add_argument("--postgres", type=int, default=5)
    parser.add_argument("--long", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    rng = random.Random(args.seed)

    root = OUT / "server"
    shutil.rmtree(root, ignore_errors=True)
    server = Server(root, port=free_port(), pg_port=free_port())
    admin = secrets.token_urlsafe(16)
    server.start(admin)
    user = ("bench", secrets.token_urlsafe(16))
    requests.post(
        f"{server.url}/api/2.0/mlflow/users/create",
        json={"username": user[0], "password": user[1]},
        auth=("admin", admin),
        timeout=60,
    ).raise_for_status()
    try:
        trials(server, user, rng, args)
    finally:
        server.stop()


def api(server: Server, user, path: str, **body) -> dict:
    response = requests.post(f"{server.url}/api/2.0/mlflow/{path}", json=body, auth=user, timeout=60)
    response.raise_for_status()
    return response.json()


def check(server: Server, user, experiment: str, epochs: int) -> tuple[str, int, bool, int]:
    """(final run status, runs left RUNNING, one point per epoch per metric, runs in the experiment)."""
    found = requests.get(
        f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": experiment},
        auth=user,
        timeout=60,
    ).json()
    runs = api(server, user, "runs/search", experiment_ids=[found["experiment"]["experiment_id"]]).get("runs", [])
    final = max(runs, key=lambda r: r["info"]["start_time"])
    single = True
    for metric in final["data"]["metrics"]:
        if metric["key"].startswith("test/"):
            continue
        history = requests.get(
            f"{server.url}/api/2.0/mlflow/metrics/get-history",
            params={"run_id": final["info"]["run_id"], "metric_key": metric["key"]},
            auth=user,
            timeout=60,
        ).json()["metrics"]
        single = single and sorted(m["step"] for m in history) == list(range(1, epochs + 1))
    running = sum(r["info"]["status"] == "RUNNING" for r in runs)
    return final["info"]["status"], running, single, len(runs)


def trials(server: Server, user, rng: random.Random, args) -> None:
    base = template("server-template")
    epochs = 30

    def repro(where: Path, experiment: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        tracking = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": user[0],
            "MLFLOW_TRACKING_PASSWORD": user[1],
            "MLFLOW_EXPERIMENT_NAME": experiment,
            **(extra or {}),
        }
        return subprocess.Popen(
            ["dvc", "repro", "train"],
            cwd=where,
            env={**env(where), **tracking},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    reference = trial_dir("server-reference", base)
    began = time.perf_counter()
    out = repro(reference, "reference").communicate()[0]
    duration = time.perf_counter() - began
    assert (reference / "metrics/train.json").exists(), out
    expected = {p: (reference / p).read_bytes() for p in COMPARED}
    print(f"uninterrupted dvc repro train against the server: {duration:.1f} s; {server.url}")
    print(
        "| # | killed | at (s) | down (s) | train exit | rerun | metrics same | final run | RUNNING left | "
        "1 point per epoch | runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    kinds = [k for k in ("mlflow", "postgres", "long") for _ in range(getattr(args, k))]
    totals = {"trials": 0, "survived": 0}
    for i, kind in enumerate(kinds, 1):
        where = trial_dir(f"server-trial{i}", base)
        experiment = f"trial{i}-{kind}"
        short = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        proc = repro(where, experiment, short if kind == "long" else None)
        at = rng.uniform(0.3, 0.8) * duration  # inside training: its first seconds are imports and the data
        time.sleep(at)
        down = rng.uniform(2, 20)
        if kind == "postgres":
            server.stop_postgres("immediate")
            time.sleep(down)
            server.start_postgres()
        else:
            server.stop_mlflow(signal.SIGKILL)
            if kind == "long":
                proc.wait()
            time.sleep(down)
            server.start_mlflow(None)
        out = proc.communicate()[0]
        code, rerun = proc.returncode, "-"
        if code != 0:  # `dvc repro` again: train.resume continues the run from its checkpoint
            again = repro(where, experiment)
            out += "\n--- rerun ---\n" + again.communicate()[0]
            rerun = "ok" if again.returncode == 0 else f"FAILED ({again.returncode})"
        (OUT / f"server-trial{i}.log").write_text(out)
        same = all((where / p).exists() and (where / p).read_bytes() == expected[p] for p in COMPARED)
        status, running, single, n_runs = check(server, user, experiment, epochs)
        ok = same and status == "FINISHED" and running == 0 and single and n_runs == 1
        totals["trials"] += 1
        totals["survived"] += ok
        print(
            f"| {i} | {kind} | {at:.1f} | {down:.1f} | {code} | {rerun} | {'yes' if same else 'NO'} | {status} | "
            f"{running} | {'yes' if single else 'NO'} | {n_runs} |"
        )
        if ok:
            shutil.rmtree(where, ignore_errors=True)
    print(f"outages injected: {totals['trials']}, survived: {totals['survived']}")


if __name__ == "__main__":
    main()
