"""The CI experiment rerun: checks of the committed default experiment, each proving one thing.

    python -m genlab.pipeline.reproduce             # rerun the pipeline (dvc repro -f), then the checks
    python -m genlab.pipeline.reproduce --no-run    # check the working tree's metrics without rerunning
    python -m genlab.pipeline.reproduce expected [--seeds 8 --k 4]   # rebuild metrics/expected.json (make expected)
    python -m genlab.pipeline.reproduce lock        # dvc.lock records this commit's code and params (CI's first step)

determinism   same machine kind, bit-exact. Float32 training is chaotic, so equal numbers are promised
              only between equal machine fingerprints (genlab.core.machine: CPU model, ISA, kernels, threads,
              libraries). When the committed metrics/machine.json equals the rerun's, the rerun must
              equal the committed files byte for byte; otherwise the pipeline runs a second time here
              and the two reruns must be byte-identical.
clean         the rerun (or, with --no-run, the `make run` before it) leaves `git status --porcelain` empty
              on the same machine kind: an untouched clone must not look dirty to its next run. On another
              machine kind dvc.lock and metrics/ legitimately differ; they are listed, and anything else fails.
reproduction  any machine. Every number with a band in metrics/expected.json must lie inside it. A band
              is mean ± k·sd over N seeds of the committed experiment (the data split held fixed), so
              it measures how far a run can move for reasons that are not a change of params or code;
              numbers without a band are listed as unchecked, never failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from genlab.config.params_file import parse_params
from genlab.core import atomic, machine, paths

FILES = paths.MODEL_FILES
COMPARED = [FILES.train_metrics, FILES.eval_metrics, FILES.history]
SEEDS = 8  # runs behind each band
K = 4.0  # band half-width in seed standard deviations
_SOURCES = ("params.yaml", "dvc.yaml", "src", "stages")
_ISOLATE = ("MLFLOW_TRACKING_URI", "GENLAB_ROOT", "DVC_EXP_NAME")  # seed runs track into their own store


def numbers(path: Path, text: str) -> dict[str, float]:
    """Every number of a metrics file under a stable key; history rows are keyed by their epoch."""
    if path.suffix == ".json":
        out: dict[str, float] = {}

        def walk(node, prefix):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{prefix}{k}.")
            elif isinstance(node, (int, float)) and not isinstance(node, bool):
                out[prefix.rstrip(".")] = float(node)

        walk(json.loads(text), "")
        return out
    frame = pd.read_csv(io.StringIO(text))
    # Empty cells (a metric computed only some epochs, e.g. the GAN's domain FID) are not numbers.
    return {
        f"epoch{int(row['epoch'])}.{col}": float(v)
        for _, row in frame.iterrows()
        for col, v in row.items()
        if col != "epoch" and v == v
    }


def checked_numbers(texts: dict[Path, str], epochs: list[int]) -> dict[str, float]:
    """The numbers the reproduction check compares: the summary files whole, history at `epochs`."""
    out = {}
    for path, text in texts.items():
        for key, value in numbers(path, text).items():
            if path == FILES.history and int(key.split(".")[0][len("epoch") :]) not in epochs:
                continue
            out[f"{path.as_posix()}:{key}"] = value
    return out


def history_epochs(total: int) -> list[int]:
    """A few epochs to compare (epochs count from 1): the first, 10 %, 25 %, 50 % and the last."""
    return sorted({max(round(total * f), 1) for f in (0.0, 0.1, 0.25, 0.5, 1.0)})


def make_bands(runs: list[dict[str, float]], k: float) -> dict[str, dict[str, float]]:
    """mean ± k·sd per number present in every run (sd with N - 1; 0 for a number constant over seeds)."""
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    bands = {}
    for key in keys:
        values = [r[key] for r in runs]
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        bands[key] = {"mean": mean, "sd": sd, "low": mean - k * sd, "high": mean + k * sd}
    return bands


def band_failures(expected: dict[str, Any], rerun: dict[str, float]) -> tuple[list[str], list[str]]:
    """(failures, unchecked keys): a failure names the number, its value, the band, the distance and the sd."""
    k, n = expected["how"]["k"], len(expected["how"]["seeds"])
    failures, unchecked = [], sorted(rerun.keys() - expected["bands"].keys())
    for key, band in expected["bands"].items():
        if key not in rerun:
            failures.append(f"{key}: missing from the rerun")
            continue
        value, low, high, sd = rerun[key], band["low"], band["high"], band["sd"]
        if low <= value <= high:
            continue
        if sd == 0:
            failures.append(f"{key} = {value!r}, expected exactly {band['mean']!r} (the same in all {n} seed runs)")
            continue
        by = low - value if value < low else value - high
        failures.append(
            f"{key} = {value:.6g} is outside its band [{low:.6g}, {high:.6g}] by {by:.3g} ({by / sd:.1f} sd); "
            f"band = mean {band['mean']:.6g} ± {k:g} × sd {sd:.3g} over {n} seeds"
        )
    return failures, unchecked


def byte_differences(a: dict[Path, str], b: dict[Path, str]) -> list[str]:
    """Files whose bytes differ, each with its first few differing numbers."""
    out = []
    for path in a:
        if a[path] == b[path]:
            continue
        left, right = numbers(path, a[path]), numbers(path, b[path])
        diffs = [
            f"{k} {left.get(k)!r} vs {right.get(k)!r}"
            for k in sorted(left.keys() | right.keys())
            if left.get(k) != right.get(k)
        ]
        out.append(f"{path}: {len(diffs)} number(s) differ, e.g. " + "; ".join(diffs[:3]))
    return out


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _committed(path: Path) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path.as_posix()}"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _refuse_if_changed() -> bool:
    changed = _git("status", "--porcelain", "--", *_SOURCES).strip()
    if changed:
        print(
            f"refusing: params or code differ from the commit, so its metrics say nothing about them:\n{changed}",
            file=sys.stderr,
        )
    return bool(changed)


def _read(root: Path = Path()) -> dict[Path, str]:
    return {p: (root / p).read_text() for p in COMPARED}


def _repro() -> None:
    # A forced rerun must train: the finished run's checkpoint (genlab.training.resume.finished_state) would otherwise
    # restore the previous rerun's outputs, and two "reruns" would agree without the second one training.
    # An unfinished run's marker stays: its checkpoint is still someone's to resume.
    with contextlib.suppress(OSError, ValueError):
        if json.loads(FILES.training_run.read_text()).get("finished"):
            FILES.training_run.unlink()
    subprocess.run(["dvc", "repro", "--force"], check=True)


# What a rerun may legitimately change on another machine kind: its numbers, and their md5s in dvc.lock.
_DRIFTS = ("dvc.lock", "metrics/")


def leftover_changes(porcelain: str, same_kind: bool) -> tuple[list[str], list[str]]:
    """(changes that fail, changes expected on another machine kind) in `git status --porcelain` after a rerun.
    On the same machine kind an untouched clone's rerun must leave the checkout as committed: anything it
    changes (dvc.lock, a metric, a file no .gitignore covers) would make the next run's commit dirty."""
    lines = [line for line in porcelain.splitlines() if line.strip()]
    if same_kind:
        return lines, []
    drift = [line for line in lines if line[3:].startswith(_DRIFTS)]
    return [line for line in lines if line not in drift], drift


# --- the checks -----------------------------------------------------------------------------------


def check(rerun: bool) -> int:
    if _refuse_if_changed():
        return 2
    committed = {p: _committed(p) for p in COMPARED}
    expected_text, machine_text = _committed(paths.EXPECTED), _committed(FILES.machine)
    if None in committed.values() or machine_text is None:
        print(
            f"no committed metrics to check: run `dvc repro` and commit metrics/ ({FILES.machine} included)",
            file=sys.stderr,
        )
        return 2
    if rerun:
        _repro()
    here = _read()
    committed_fp, rerun_fp = json.loads(machine_text), json.loads(FILES.machine.read_text())
    same_kind = committed_fp == rerun_fp
    print(f"committed on {machine.describe(committed_fp)}")
    print(f"rerun on     {machine.describe(rerun_fp)}")
    print(
        "same machine kind: bit-exact check against the committed run"
        if same_kind
        else "another machine kind: "
        + ", ".join(
            f"{k} {committed_fp.get(k)!r} -> {rerun_fp.get(k)!r}"
            for k in sorted(committed_fp.keys() | rerun_fp.keys())
            if committed_fp.get(k) != rerun_fp.get(k)
        )
    )

    ok = _determinism(committed, here, same_kind, rerun)
    ok = _reproduction(expected_text, here) and ok
    return 0 if _clean(same_kind) and ok else 1


def _clean(same_kind: bool) -> bool:
    failing, drift = leftover_changes(_git("status", "--porcelain"), same_kind)
    if drift:
        print(f"git status: {len(drift)} file(s) differ from the commit, as expected on another machine kind:")
        for line in drift:
            print(f"  {line}")
    print(
        "clean checkout after the rerun: "
        + ("passed" if not failing else f"FAILED, the rerun left {len(failing)} change(s) (git status --porcelain)")
    )
    for line in failing:
        print(f"  {line}")
    return not failing


def _determinism(committed: dict[Path, str], here: dict[Path, str], same_kind: bool, rerun: bool) -> bool:
    if same_kind:
        problems, what = byte_differences(committed, here), "rerun vs the committed run (same machine kind)"
    else:
        against = byte_differences(committed, here)
        print(f"bit-exact against the committed run: not promised across machine kinds ({len(against)} file(s) differ)")
        for line in against:
            print(f"  {line}")
        if not rerun:
            print("determinism: skipped (--no-run, and the committed run is from another machine kind)")
            return True
        _repro()
        problems, what = byte_differences(here, _read()), "two reruns on this machine"
    print(f"determinism ({what}): " + ("passed, byte-identical" if not problems else "FAILED"))
    for line in problems:
        print(f"  {line}")
    return not problems


def _reproduction(expected_text: str | None, here: dict[Path, str]) -> bool:
    if expected_text is None:
        print(f"reproduction: FAILED, {paths.EXPECTED} is not committed: build it with `make expected`")
        return False
    expected = json.loads(expected_text)
    how = expected["how"]
    failures, unchecked = band_failures(expected, checked_numbers(here, how["history_epochs"]))
    print(
        f"reproduction (bands of {len(how['seeds'])} seeds, mean ± {how['k']:g} sd, built on {how['machine']}): "
        + (
            f"passed, {len(expected['bands'])} numbers inside their bands"
            if not failures
            else f"FAILED, {len(failures)} outside"
        )
        + (f"; {len(unchecked)} without a band, unchecked" if unchecked else "")
    )
    for line in failures:
        print(f"  {line}")
    return not failures


# --- building the bands ---------------------------------------------------------------------------


def _seed_run(seed: int, root: Path) -> dict[Path, str]:
    """The committed experiment with another `seed` for everything after the data split, in a clone of HEAD.

    The split stays the committed one: it is integer arithmetic, the same on every machine, so varying it
    would widen the bands with test-set sampling noise that no rerun of the committed experiment has.
    The stages run in dvc.yaml's order, up to the one that writes the evaluation metrics.
    """
    clone = root / f"seed{seed}"
    subprocess.run(["git", "clone", "-q", str(Path.cwd()), str(clone)], check=True)
    # The clone's own code: the environment's editable install points at the checkout, whatever its state.
    env = {**{k: v for k, v in os.environ.items() if k not in _ISOLATE}, "PYTHONPATH": str(clone / "src")}
    for name, stage in yaml.safe_load((clone / "dvc.yaml").read_text())["stages"].items():
        proc = subprocess.run(stage["cmd"], shell=True, cwd=clone, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"seed {seed}: stage {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
            )
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])]
        if paths.PREPARED_DIR.as_posix() in outs:
            params = parse_params((clone / paths.PARAMS).read_text())
            (clone / paths.PARAMS).write_text(yaml.safe_dump({**params, "seed": seed}, sort_keys=False))
        if FILES.eval_metrics.as_posix() in outs:
            return _read(clone)
    raise RuntimeError(f"no stage in dvc.yaml writes {FILES.eval_metrics}")


def build_expected(seeds: int, k: float) -> int:
    if _refuse_if_changed():
        return 2
    committed = {p: _committed(p) for p in COMPARED}
    machine_text = _committed(FILES.machine)
    if None in committed.values() or machine_text is None:
        print("commit the default experiment's metrics first (`dvc repro`, then git add metrics/)", file=sys.stderr)
        return 2
    epochs = history_epochs(int(json.loads(committed[FILES.train_metrics])["epochs"]))
    base = parse_params(_committed(paths.PARAMS))["seed"]  # read as DVC and the stages read it
    runs = []
    with tempfile.TemporaryDirectory(prefix="genlab-expected-") as tmp:
        for seed in range(base, base + seeds):
            began = time.perf_counter()
            texts = _seed_run(seed, Path(tmp))
            print(f"seed {seed}: done in {time.perf_counter() - began:.0f}s", flush=True)
            if seed == base and json.loads((Path(tmp) / f"seed{seed}" / FILES.machine).read_text()) == json.loads(
                machine_text
            ):
                problems = byte_differences(committed, texts)
                if problems:  # the committed numbers must be what the committed code gives here
                    print("the committed metrics differ from a rerun on their own machine kind:", *problems, sep="\n  ")
                    return 1
                print(f"seed {seed} is the committed run: byte-identical to the committed metrics (same machine kind)")
            runs.append(checked_numbers(texts, epochs))
    bands = make_bands(runs, k)
    fp = json.loads(machine_text)
    committed_numbers = checked_numbers(committed, epochs)
    for key, band in bands.items():
        band["committed"] = committed_numbers[key]
    outside = [key for key, b in bands.items() if not b["low"] <= b["committed"] <= b["high"]]
    how = {
        "command": f"python -m genlab.pipeline.reproduce expected --seeds {seeds} --k {k:g}",
        "commit": _git("rev-parse", "HEAD").strip(),
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(fp),
        "seeds": list(range(base, base + seeds)),
        "k": k,
        "history_epochs": epochs,
        "note": "band = mean ± k·sd (sd over the seeds, N - 1) of runs that keep the committed data split and "
        "change `seed` for everything after it; history rows by epoch (from 1)",
    }
    atomic.write_json(paths.EXPECTED, {"how": how, "bands": bands})
    print(f"wrote {paths.EXPECTED}: {len(bands)} bands from {seeds} seeds (k = {k:g})")
    for key in outside:
        print(f"  warning: the committed {key} = {bands[key]['committed']:.6g} lies outside its own band")
    return 1 if outside else 0


def stale_lock(status: dict[str, Any], tracked: set[str]) -> list[str]:
    """`stage: path` for each dependency of `dvc status --json` that git tracks and that differs from dvc.lock:
    code or params that the committed outputs were not made with (outputs and data are merely absent)."""
    return [
        f"{stage}: {path}"
        for stage, changes in status.items()
        for change in changes
        if isinstance(change, dict)
        for path, how in change.get("changed deps", {}).items()
        if how == "modified" and path in tracked
    ]


def check_lock() -> int:
    """Fail in a second, not after the whole CI, when dvc.lock was not remade after a change of code or params."""
    status = json.loads(subprocess.run(["dvc", "status", "--json", "dvc.yaml"], capture_output=True, text=True,
                                       check=True).stdout or "{}")  # fmt: skip
    files = _git("ls-files").splitlines()
    tracked = set(files) | {folder.as_posix() for f in files for folder in Path(f).parents}
    stale = stale_lock(status, tracked)
    if stale:
        print(
            "dvc.lock records other code or params than this commit's, so the committed metrics/ were not made by "
            "it; run `dvc repro` (or `make run`) and commit dvc.lock with metrics/:",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    print("dvc.lock: every stage's code and params are this commit's")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--no-run", action="store_true", help="check the working tree's metrics without rerunning")
    build = sub.add_parser("expected", help=f"rebuild {paths.EXPECTED} from seed runs of the committed experiment")
    build.add_argument("--seeds", type=int, default=SEEDS, help=f"runs behind each band (>= 5; default {SEEDS})")
    build.add_argument("--k", type=float, default=K, help=f"band half-width in standard deviations (default {K:g})")
    sub.add_parser("lock", help="check that dvc.lock records this commit's code and params (no rerun)")
    args = parser.parse_args(argv)
    if args.command == "lock":
        return check_lock()
    if args.command == "expected":
        if args.seeds < 5 or not math.isfinite(args.k) or args.k <= 0:
            parser.error("--seeds must be >= 5 and --k a positive number")
        return build_expected(args.seeds, args.k)
    return check(rerun=not args.no_run)


if __name__ == "__main__":
    sys.exit(main())
