"""What trying a family costs: one whole `dvc exp run` per command, each in a fresh clone of HEAD (so the
classifier and perceptual stages are part of the bill, as on a user's first try), timed end to end.

    PYTHONPATH=src .venv/bin/python bench/family_costs.py                    # the smoke commands (README)
    PYTHONPATH=src .venv/bin/python bench/family_costs.py --set defaults     # each family's defaults on digits
    PYTHONPATH=src .venv/bin/python bench/family_costs.py --only gan ddpm --set smoke-mnist

Prints one Markdown row per command: family, data, wall time, the train stage's mean epoch seconds (from its
`(epoch X s` lines), the epochs run, and the headline number (FID of samples, else of reconstructions) ±
its bootstrap spread.
The MNIST sets read the local mirror (../shared/datasets/mnist). GPU: the same commands with -S device=cuda.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = (REPO.parent / "shared" / "datasets" / "mnist").resolve()
MNIST = ["data.name=mnist", f"data.mirror={MIRROR}"]
SMOKE = {  # family -> the -S values of its smoke-sized command (README: Try any family in minutes)
    "vae": "data.limit=500 train.epochs=20",
    "gan": "model.family=gan data.limit=500 train.epochs=10",
    "ddpm": "model.family=ddpm data.limit=500 train.epochs=10 ddpm.bound_strata=10 ddpm.steps_grid=[10,50]",
    "flowmo": "model.family=flowmo data.limit=500 train.epochs=10 flowmo.pretrain_epochs=8",
}
MNIST_TOO = {  # 28x28: FlowMo on 4x4 patches; the DDPM's 28x28 sampler runs a few images/s, so fewer steps and draws
    "flowmo": "flowmo.patch=4 flowmo.tokens=6 flowmo.bits=9 flowmo.group=9",
    "ddpm": "ddpm.sampler_steps=10 sample.class_samples=200",
}
SETS = {
    "smoke": {f: SMOKE[f].split() for f in SMOKE},
    "smoke-mnist": {f: [*MNIST, *SMOKE[f].split(), *MNIST_TOO.get(f, "").split()] for f in SMOKE},
    "defaults": {f: ([] if f == "vae" else [f"model.family={f}"]) for f in SMOKE},
}


def run(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="genlab-cost-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        env = {**os.environ, "PYTHONPATH": str(clone / "src"), "PATH": path}
        env.pop("MLFLOW_TRACKING_URI", None)
        began = time.perf_counter()
        command = ["dvc", "exp", "run", "dvc.yaml", *(a for o in overrides for a in ("-S", o))]
        proc = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if proc.returncode != 0:
            return {"wall": wall, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1]}
        epochs = [float(s) for s in re.findall(r"^epoch \d+/\d+ .*\(epoch ([\d.]+) s", proc.stdout, re.M)]
        test = json.loads((clone / "metrics/eval.json").read_text())["test"]
        key = "domain_fid" if "domain_fid" in test else "domain_rfid"
        headline = f"{key} {test[key]:.2f} ± {test.get(key + '_std', float('nan')):.2f}"
        return {"wall": wall, "epoch_s": sum(epochs) / max(len(epochs), 1), "epochs": len(epochs),
                "headline": headline, "n_test": int(test.get("num_samples", 0))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="smoke")
    parser.add_argument("--only", nargs="+", choices=sorted(SMOKE))
    args = parser.parse_args()
    print("| family | command (-S ...) | wall | train epoch (mean) | epochs | headline (n test) |")
    print("|---|---|---:|---:|---:|---|")
    for family, overrides in SETS[args.set].items():
        if args.only and family not in args.only:
            continue
        r = run(overrides)
        shown = " ".join(overrides).replace(str(MIRROR), "../shared/datasets/mnist")
        if "error" in r:
            print(f"| {family} | {shown or '(defaults)'} | {r['wall']:.0f} s | failed: {r['error']} | | |", flush=True)
            continue
        print(f"| {family} | {shown or '(defaults)'} | {r['wall']:.0f} s | {r['epoch_s']:.2f} s | {r['epochs']} "
              f"| {r['headline']} ({r['n_test']}) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
