"""The CI experiment rerun: rerun the committed default experiment, compare with committed metrics/.

    python -m genlab.reproduce            # dvc repro -f, then compare
    python -m genlab.reproduce --no-run   # compare the working tree's metrics only

Same params + same code + same machine kind give identical numbers; the tolerance below only
absorbs last-bit differences between CPUs of that kind (e.g. another SIMD code path in BLAS).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from genlab import paths

RTOL = 1e-4  # relative tolerance per number
ATOL = 1e-6  # absolute tolerance, for numbers near zero
COMPARED = [paths.TRAIN_METRICS, paths.EVAL_METRICS, paths.TRAIN_HISTORY]


def _numbers(path: Path, text: str) -> dict[str, float]:
    if path.suffix == ".json":
        out: dict[str, float] = {}

        def walk(node, prefix):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{prefix}{k}.")
            elif isinstance(node, (int, float)):
                out[prefix.rstrip(".")] = float(node)

        walk(json.loads(text), "")
        return out
    frame = pd.read_csv(io.StringIO(text))
    # Empty cells (a metric computed only some epochs, e.g. the GAN's domain FID) are not numbers.
    return {f"row{i}.{col}": float(v) for i, row in frame.iterrows() for col, v in row.items() if v == v}


def compare(committed: dict[str, float], rerun: dict[str, float]) -> list[str]:
    """Human-readable differences; empty when everything matches within tolerance."""
    problems = [f"{k}: missing in rerun" for k in committed.keys() - rerun.keys()]
    problems += [f"{k}: not in committed metrics" for k in rerun.keys() - committed.keys()]
    for key in sorted(committed.keys() & rerun.keys()):
        a, b = committed[key], rerun[key]
        if not math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            problems.append(f"{key}: committed {a!r}, rerun {b!r}")
    return problems


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="compare without rerunning the pipeline")
    args = parser.parse_args(argv)

    changed = _git("status", "--porcelain", "--", "params.yaml", "dvc.yaml", "src", "stages").strip()
    if changed:
        print(f"refusing to compare: params or code differ from the commit:\n{changed}", file=sys.stderr)
        return 2
    committed = {p: _git("show", f"HEAD:{p.as_posix()}") for p in COMPARED}
    if not args.no_run:
        subprocess.run(["dvc", "repro", "--force"], check=True)

    failures = 0
    for path in COMPARED:
        problems = compare(_numbers(path, committed[path]), _numbers(path, path.read_text()))
        status = "reproduced" if not problems else f"{len(problems)} difference(s)"
        print(f"{path}: {status} (rtol {RTOL}, atol {ATOL})")
        for line in problems[:20]:
            print(f"  {line}")
        failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
