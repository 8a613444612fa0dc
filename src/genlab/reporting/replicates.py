"""Seed replicates: queue a variant over several seeds, then pool its runs and compare the pools.

    python -m genlab.reporting.replicates --seeds 0 1 2 -S vae.beta=0.5 --dry-run   # print the dvc commands
    python -m genlab.reporting.replicates --seeds 0 1 2 -S vae.beta=0.5             # queue them
    dvc queue start -j 2                                                   # run the queue
    python stages/report.py --group --baseline vae.beta=1.0                # reports/groups.*, verdicts.*
    python -m genlab.reporting.replicates --pipeline pipelines/tokens/dvc.yaml --seeds 0 1 2 -S maskgit.depth=6

A group is the finished runs whose logged params are equal apart from `seed` (genlab.reporting.report picks
the params that tell groups apart). Per group: n, mean and sd (ddof=1) of each metric. Each group
against a baseline: B − A with a Welch confidence interval, the p-value and a sentence saying which
is lower, or "no difference beyond seed noise".
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genlab.core.errors import GenlabError, exit_on_error
from genlab.core.paths import PIPELINE, TOKENS_PIPELINE

SEED = "seed"
SPREAD_SUFFIX = "_std"  # per-run spreads (bootstrap sd of a sample metric): shown, never tested
ALPHA = 0.05


class ReplicateError(GenlabError):
    """A bad seed, override or baseline, or no DVC repository to queue experiments in."""


# --- comparing groups -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Welch:
    """B − A, its (1 − alpha) confidence interval, the Welch–Satterthwaite dof and the two-sided p-value."""

    diff: float
    low: float
    high: float
    dof: float
    p: float


def welch(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> Welch:
    """Welch's unequal-variance t-test of mean(b) − mean(a); both need n ≥ 2 and not both sd = 0."""
    from scipy import stats  # scikit-learn's dependency; imported here as it costs a second

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = float(b.mean() - a.mean())
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    return Welch(diff, diff - half, diff + half, dof, float(2 * stats.t.sf(abs(diff) / se, dof)))


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each param's last dotted part (`vae.beta` -> `beta`) where that is unique among `keys`, else the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def label_groups(runs: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """`beta=0.5 latent_dim=8` per run, from its values of the group keys (a param the run did not log,
    such as another family's, is left out); `all runs` when there are no keys."""
    if not keys:
        return pd.Series("all runs", index=runs.index)
    names = short_keys(keys)
    return runs[list(keys)].apply(lambda row: " ".join(f"{names[k]}={row[k]}" for k in keys if row[k] != ""), axis=1)


def mark_replicates(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Add `group`, and `rerun`: True for all but the newest of runs with equal group, seed and commit.

    Such runs repeat a run (same seed, same code) rather than replicate it: counting them would shrink
    the sd. `runs` is oldest first and holds the columns `seed`, `commit` and `keys`."""
    marked = runs.assign(group=label_groups(runs, keys))
    return marked.assign(rerun=marked.duplicated(["group", SEED, "commit"], keep="last"))


def _seed_order(seed: str) -> tuple[bool, int, str]:
    return (not seed.isdigit(), int(seed) if seed.isdigit() else 0, seed)  # numbers by value, then the rest


def group_table(runs: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group (in order of its oldest run): the keys' values, n, seeds, commits, reruns left
    out, then `<metric>_mean`, `_sd` (ddof=1; NaN, not 0, when n = 1) and `_n` (runs that logged it)."""
    rows = []
    for label, members in runs.groupby("group", sort=False):
        kept = members[~members["rerun"]]
        row: dict[str, object] = {"group": label, **{k: kept[k].iloc[0] for k in keys}}
        row |= {
            "n": len(kept),
            "seeds": " ".join(sorted(set(kept[SEED]), key=_seed_order)),
            "commits": kept["commit"].nunique(),
            "reruns": int(members["rerun"].sum()),
        }
        for m in metrics:
            values = kept[m].dropna()
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_sd"] = values.std(ddof=1) if len(values) >= 2 else math.nan
            row[f"{m}_n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _matches(logged: str, wanted: str) -> bool:
    """Equal as text, or as numbers (`vae.beta=1` finds the logged `1.0`)."""
    if logged == wanted:
        return True
    try:
        return float(logged) == float(wanted)
    except ValueError:
        return False


def pick_baseline(groups: pd.DataFrame, keys: Sequence[str], spec: Sequence[str] | None) -> str:
    """The label of the group that `spec` (KEY=VALUE items) selects; without one, the oldest group."""
    labels = list(groups["group"])
    if not spec:
        return labels[0]
    chosen = groups
    for item in spec:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReplicateError(f"--baseline {item!r}: expected KEY=VALUE, e.g. vae.beta=1.0")
        if key == SEED:
            raise ReplicateError("--baseline cannot select by seed: a group pools its seeds; choose by another param")
        if key not in keys:
            raise ReplicateError(
                f"--baseline {item!r}: {key!r} does not tell the groups apart (equal in every selected run, or "
                f"never logged); the groups differ in: {', '.join(keys) or 'nothing (there is one group)'}"
            )
        chosen = chosen[[_matches(str(v), value) for v in chosen[key]]]
    if len(chosen) != 1:
        found = "no group" if chosen.empty else f"{len(chosen)} groups ({'; '.join(chosen['group'])})"
        raise ReplicateError(
            f"--baseline {' '.join(spec)} selects {found}; it must select one of: {'; '.join(labels)}"
            + ("; add another KEY=VALUE" if len(chosen) > 1 else "")
        )
    return str(chosen["group"].iloc[0])


def _fmt(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # -0.04 at 0 decimals reads "0", not "-0"


def _decimals(half_width: float) -> int:
    """Two significant digits of the interval's half-width set the rounding of both numbers."""
    return max(0, 1 - math.floor(math.log10(half_width))) if half_width > 0 else 4


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def sentence(a: str, b: str, metric: str, xa: np.ndarray, xb: np.ndarray, w: Welch | None, alpha: float) -> str:
    """The verdict in words: "B lower M than A by X ± Y (95 % CI, Welch p = …, n = 3 + 3)" or "no difference"."""
    n = f"n = {len(xa)} + {len(xb)}"
    if len(xa) < 2 or len(xb) < 2:
        return f"{b} vs {a}: needs ≥ 2 seeds per group to compare {metric} ({n})"
    if w is None:  # both groups without spread: a setting (num_samples) or a deterministic metric
        diff = float(xb.mean() - xa.mean())
        if diff == 0:
            return f"{b} vs {a}: {metric} equal in every run ({n})"
        word = "lower" if diff < 0 else "higher"
        return f"{b} {word} {metric} than {a} by {abs(diff):.4g}, the same in every seed: nothing to test ({n})"
    half = (w.high - w.low) / 2
    d = _decimals(half)
    detail = f"{100 * (1 - alpha):g} % CI, Welch {_p(w.p)}, {n}"
    if w.p < alpha:
        word = "lower" if w.diff < 0 else "higher"
        return f"{b} {word} {metric} than {a} by {_fmt(abs(w.diff), d)} ± {_fmt(half, d)} ({detail})"
    return f"{b} vs {a}: no difference in {metric} beyond seed noise ({_fmt(w.diff, d)} ± {_fmt(half, d)}, {detail})"


def compare(runs: pd.DataFrame, a: str, b: str, metric: str, alpha: float) -> dict[str, object]:
    """One verdict row: group b against group a on one metric (reruns left out)."""
    kept = runs[~runs["rerun"]]
    xa = kept.loc[kept["group"] == a, metric].dropna().to_numpy(dtype=float)
    xb = kept.loc[kept["group"] == b, metric].dropna().to_numpy(dtype=float)
    testable = len(xa) >= 2 and len(xb) >= 2 and (xa.std() > 0 or xb.std() > 0)
    w = welch(xa, xb, alpha) if testable else None
    nan = math.nan
    return {
        "group": b,
        "baseline": a,
        "metric": metric,
        "n_group": len(xb),
        "n_baseline": len(xa),
        "mean_group": xb.mean() if len(xb) else nan,
        "mean_baseline": xa.mean() if len(xa) else nan,
        "diff": w.diff if w else nan,
        "ci_low": w.low if w else nan,
        "ci_high": w.high if w else nan,
        "dof": w.dof if w else nan,
        "p": w.p if w else nan,
        "significant": bool(w and w.p < alpha),
        "verdict": sentence(a, b, metric, xa, xb, w, alpha),
    }


VERDICT_COLUMNS = [
    *("group", "baseline", "metric", "n_group", "n_baseline", "mean_group", "mean_baseline"),
    *("diff", "ci_low", "ci_high", "dof", "p", "significant", "verdict"),
]


def verdict_table(
    runs: pd.DataFrame, groups: pd.DataFrame, baseline: str, metrics: Sequence[str], alpha: float = ALPHA
) -> pd.DataFrame:
    """Every other group against `baseline` on each metric except the `_std` spreads (p-values uncorrected)."""
    if not 0 < alpha < 1:
        raise ReplicateError(f"--alpha {alpha}: expected a significance level between 0 and 1, e.g. 0.05")
    tested = [m for m in metrics if not m.endswith(SPREAD_SUFFIX)]
    rows = [compare(runs, baseline, b, m, alpha) for b in groups["group"] if b != baseline for m in tested]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


# --- queueing seeds -------------------------------------------------------------------------------


def parse_seed(text: str) -> int:
    """A seed as params.yaml accepts it: an integer in [0, 2^32)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise ReplicateError(f"--seeds: {text!r} is not a seed: expected an integer in [0, 4294967295]")
    return seed


def parse_set(item: str) -> str:
    """A `-S KEY=VALUE` override; seed belongs to --seeds."""
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise ReplicateError(f"-S {item!r}: expected KEY=VALUE, e.g. -S vae.beta=0.5")
    if key == SEED:
        raise ReplicateError(f"-S {item!r}: give seeds with --seeds, not -S seed=...")
    return item


def queue_commands(
    seeds: Sequence[int], sets: Sequence[str], name: str | None = None, pipeline: str = str(PIPELINE)
) -> list[list[str]]:
    """`dvc exp run --queue PIPELINE -S seed=K -S ...` per seed (with `-n NAME-seedK` when a name is given)."""
    if len(set(seeds)) != len(seeds):
        raise ReplicateError(f"--seeds {' '.join(map(str, seeds))}: a seed is repeated; each must differ")
    overrides = [arg for item in sets for arg in ("-S", parse_set(item))]
    return [
        ["dvc", "exp", "run", "--queue", pipeline, "-S", f"{SEED}={s}", *overrides]
        + (["-n", f"{name}-seed{s}"] if name else [])
        for s in seeds
    ]


def check_overrides(root: Path, sets: Sequence[str]) -> None:
    """Validate params.yaml with the overrides applied, so that a typo fails now, not in every queued run."""
    from genlab.config.experiment import load_config  # imports the families (torch): only when queueing
    from genlab.config.params_file import parse_params

    overrides = {}
    for item in sets:
        key, _, value = item.partition("=")
        overrides[key] = parse_params(f"value: {value}", f"-S {item}")["value"]  # YAML 1.2, as DVC reads -S
    load_config(root / "params.yaml", overrides)


def dvc_root(start: Path) -> Path:
    """The nearest folder at or above `start` with a .dvc/ folder."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise ReplicateError(f"{start} is not inside a DVC repository (no .dvc/ folder there or above): run from genlab")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m genlab.reporting.replicates",
        description="Queue one variant over several seeds as DVC experiments (run them with `dvc queue start`).",
    )
    parser.add_argument("--seeds", nargs="+", required=True, type=str, metavar="K", help="seeds, e.g. 0 1 2")
    parser.add_argument(
        "-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S"
    )
    parser.add_argument(
        "--pipeline",
        default=str(PIPELINE),
        help=f"the pipeline file to run (default: %(default)s; {TOKENS_PIPELINE} for the tokenizer and its prior)",
    )
    parser.add_argument("-n", "--name", help="experiment names NAME-seedK (default: DVC's own names)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[list[str]]:
    """Queue (or with --dry-run print) one experiment per seed; return the command lines."""
    args = parse(argv)
    commands = queue_commands([parse_seed(s) for s in args.seeds], args.sets, args.name, args.pipeline)
    root = dvc_root(Path.cwd())
    if not (root / args.pipeline).is_file():
        raise ReplicateError(
            f"--pipeline {args.pipeline}: no such file in {root}; expected {PIPELINE} or {TOKENS_PIPELINE}"
        )
    check_overrides(root, args.sets)
    if not args.dry_run and shutil.which("dvc") is None:
        raise ReplicateError("no `dvc` on PATH: activate genlab's environment (source .venv/bin/activate)")
    for command in commands:
        print(" ".join(command))
        if not args.dry_run and subprocess.run(command, cwd=root).returncode != 0:
            raise ReplicateError(f"`{' '.join(command)}` failed (its message is above); the seeds before it are queued")
    if not args.dry_run:
        print(f"queued {len(commands)}: `dvc queue start -j 2` runs them, then `python stages/report.py --group`")
    return commands


if __name__ == "__main__":
    exit_on_error(main)
