"""How long `python stages/report.py` takes on a store of many runs (issue 26: ≤ 3 s on 50 runs).

    python bench/report_speed.py                     # 50 runs, 3 repeats of each call
    python bench/report_speed.py --runs 200 --repeats 5

Builds a SQLite MLflow store in bench/out/report_store/ shaped like genlab's: per run 30 test metrics (21
with *_std spreads), 6 curves of `--epochs` points, 80 params, genlab's tags, samples.png and
reconstructions.png (seed replicates: 5 settings × runs/5 seeds). Then times whole CLI calls (a fresh
Python each, as a user types them): the plain table, `--group`, and `--group --html`; prints the median
and the range of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "report_store"


def build_store(root: Path, runs: int, epochs: int) -> str:
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("genlab", artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    grid = root / "grid"
    grid.mkdir()
    for name in ("samples.png", "reconstructions.png"):
        Image.fromarray(rng.integers(0, 256, (242, 242), dtype=np.uint8)).save(grid / name)
    for i in range(runs):
        beta, seed = 0.5 * (1 + i % 5), i // 5
        tags = {
            "genlab.family": "vae",
            "genlab.dataset": "digits",
            "genlab.git_commit": f"{i:040d}",
            "genlab.git_dirty": "false",
            "dvc.exp_name": f"exp-{i}",
        }
        run = client.create_run(experiment, run_name=f"exp-{i}", start_time=1_700_000_000_000 + i, tags=tags)
        params = {f"p{k}": str(k) for k in range(78)} | {"seed": str(seed), "vae.beta": str(beta)}
        metrics = []
        for k in range(30):  # as the evaluate stage logs: 30 test metrics, 21 of them with a spread
            value = float(rng.normal(10 * k + beta, 1))
            metrics.append(Metric(f"test/m{k}", value, 0, 0))
            metrics += [Metric(f"test/m{k}_std", abs(value) / 20, 0, 0)] if k < 21 else []
        for curve in ("val/elbo", "val/recon", "val/kl", "train/elbo", "train/recon", "train/kl"):
            metrics += [Metric(curve, float(-100 + e + rng.normal()), 0, e) for e in range(epochs)]
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(
                run.info.run_id,
                metrics=metrics[start : start + 1000],
                params=[Param(k, v) for k, v in params.items()] if start == 0 else [],
            )
        client.log_artifacts(run.info.run_id, str(grid), "samples")
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def time_call(args: list[str], uri: str, out: Path, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        command = [sys.executable, "stages/report.py", "--tracking-uri", uri, "--out", str(out), *args]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=os.environ)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=50, help="points per curve")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    uri = build_store(OUT, args.runs, args.epochs)
    print(f"store: {args.runs} runs, {args.epochs} epochs per curve, built in {time.perf_counter() - start:.1f} s")
    print(f"machine: {os.cpu_count()} cores, {platform_name()}, Python {sys.version.split()[0]}")
    print("| call | median s | range s |\n|---|---|---|")
    calls = (("report", []), ("report --group", ["--group"]), ("report --group --html", ["--group", "--html"]))
    for label, extra in calls:
        seconds = time_call(extra, uri, OUT / "reports", args.repeats)
        print(f"| `{label}` | {statistics.median(seconds):.2f} | {min(seconds):.2f}–{max(seconds):.2f} |", flush=True)


def platform_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
