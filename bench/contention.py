"""Training speed when the CPU is shared: one family's epochs alone, then beside one and two busy jobs.

Each measurement is a fresh worker process that trains `--family` from the committed params.yaml on
digits for `--epochs` epochs (what `dvc repro train` does, minus MLflow and checkpoints) and prints its
seconds. The busy jobs are copies of the same worker training in a loop under the same thread setting,
as two experiments of `dvc queue start -j 2` are. Every setting in `--settings` is measured idle and beside
1 and 2 busy jobs; the table gives seconds (median of `--repeats`) and the slowdown against the same
setting idle, next to the fair share: 1.5 x (jobs / cores), jobs counting the measured one.

Settings (`name=THREADS[+VAR=VALUE...]`): THREADS is torch's thread count, each VAR=VALUE an environment
variable of the workers, e.g. OpenMP's wait policy (`OMP_WAIT_POLICY=PASSIVE`) or GNU OpenMP's spin count
before a waiting thread sleeps (`GOMP_SPINCOUNT=1000`, what genlab sets; libgomp's own default is 300000).

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/contention.py --family vae --epochs 30
    cd /work/main && PYTHONPATH=src .venv/bin/python bench/contention.py --family flowmo --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(family: str, epochs: int, threads: str) -> float:
    """One training of `family` for `epochs` epochs in this process; returns its seconds."""
    import torch
    from benchlib import build, prepared, train

    from genlab.config.experiment import config_from_dict
    from genlab.config.params_file import parse_params
    from genlab.core.runtime import resolve_device

    raw = parse_params((ROOT / "params.yaml").read_text())
    raw["model"]["family"] = family
    raw["train"]["epochs"] = epochs
    cfg = config_from_dict(raw)
    torch.set_num_threads(int(threads))
    device = resolve_device("cpu")
    data = prepared(cfg)
    family_model = build(cfg, data, device)
    began = time.perf_counter()
    train(cfg, data, family_model)
    return time.perf_counter() - began


def _env(setting: str) -> tuple[dict[str, str], str]:
    threads, *assignments = setting.split("+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT / 'bench'}"
    env.update(a.split("=", 1) for a in assignments)
    return env, threads


def _command(args: argparse.Namespace, threads: str, loop: bool = False) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", "--family", args.family, "--epochs", str(args.epochs)]
    return [*cmd, "--threads", threads, *(["--loop"] if loop else [])]


def measure(args: argparse.Namespace, setting: str, busy: int) -> float:
    env, threads = _env(setting)
    loop = _command(args, threads, loop=True)
    hogs = [subprocess.Popen(loop, env=env, stdout=subprocess.DEVNULL) for _ in range(busy)]
    try:
        time.sleep(3 if busy else 0)  # let the busy jobs get past their imports and data loading
        out = subprocess.run(_command(args, threads), env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(out.splitlines()[-1])["seconds"]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", default="2", help=argparse.SUPPRESS)
    settings = "libgomp=2+GOMP_SPINCOUNT=300000,genlab=2+GOMP_SPINCOUNT=1000,passive=2+OMP_WAIT_POLICY=PASSIVE,one=1"
    parser.add_argument("--settings", default=settings)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        while args.loop:
            worker(args.family, args.epochs, args.threads)
        print(json.dumps({"seconds": worker(args.family, args.epochs, args.threads)}))
        return
    cores = len(os.sched_getaffinity(0))
    print(f"{args.family}, {args.epochs} epochs on digits, {cores} cores, median of {args.repeats}")
    fair = f"fair share: +1 <= {1.5 * 2 / cores:.1f}x, +2 <= {1.5 * 3 / cores:.1f}x"
    print(f"{'setting':<20} {'idle s':>8} {'+1 busy':>14} {'+2 busy':>14}   {fair}")
    for named in args.settings.split(","):
        name, setting = named.split("=", 1)
        seconds = [statistics.median(measure(args, setting, busy) for _ in range(args.repeats)) for busy in (0, 1, 2)]
        cells = [f"{s:8.1f} ({s / seconds[0]:4.1f}x)" for s in seconds[1:]]
        print(f"{name + ' (' + setting + ')':<20} {seconds[0]:8.1f} {cells[0]:>14} {cells[1]:>14}", flush=True)


if __name__ == "__main__":
    main()
