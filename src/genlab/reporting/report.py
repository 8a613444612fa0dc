"""Compare runs: read them from MLflow, write a table (CSV + Markdown) and a bar chart per metric.

    df = build_report(tracking_uri(), dataset="mnist", family="vae")   # -> reports/runs.{csv,md,png}
    build_report(tracking_uri(), group=True, baseline=["vae.beta=1.0"])  # + groups.{csv,md}, verdicts.{csv,md}

Filters are exact tag matches (`genlab.dataset`, `genlab.family`, `dvc.exp_name`); a value with
`%` is a SQL LIKE pattern (`dvc_exp="beta-%"`). Metrics default to every `test/*` metric present
plus the final `val/elbo`; `metrics` takes names or shell-style patterns (`test/*`, `val/elbo`).
With `group`, finished runs whose params differ only in `seed` are pooled as seed replicates and
each group is compared with a baseline (genlab.reporting.replicates holds the statistics).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genlab.core import atomic, paths
from genlab.core.errors import GenlabError
from genlab.reporting import chart, replicates
from genlab.reporting.tables import format_number, metric_columns, to_markdown

EXPERIMENT = "genlab"  # = genlab.tracking.store.EXPERIMENT; not imported from there, as it pulls in torchvision

TAGS = {"dataset": "genlab.dataset", "family": "genlab.family", "dvc_exp": "dvc.exp_name"}
ALWAYS_PARAMS = ("train.epochs",)
DEFAULT_METRICS = ("test/*", "val/elbo")
FILES = ("runs.csv", "runs.md", "runs.png")
GROUP_FILES = ("groups.csv", "groups.md", "verdicts.csv", "verdicts.md")


class ReportError(GenlabError):
    """No run matches, or the experiment / a requested metric does not exist."""


def _quote(value: str) -> str:
    if "'" in value and '"' in value:
        raise ReportError(f"filter value {value!r} holds both quote characters: drop one of them")
    return f'"{value}"' if "'" in value else f"'{value}'"


def filter_string(dataset: str | None = None, family: str | None = None, dvc_exp: str | None = None) -> str:
    """MLflow search filter for the given tag values (a value with % is a LIKE pattern)."""
    clauses = []
    for arg, value in (("dataset", dataset), ("family", family), ("dvc_exp", dvc_exp)):
        if value:
            op = "LIKE" if "%" in value else "="
            clauses.append(f"tags.`{TAGS[arg]}` {op} {_quote(value)}")
    return " and ".join(clauses)


def _search(tracking_uri: str, experiment: str, filters: str) -> pd.DataFrame:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(
            f"no MLflow experiment {experiment!r} in {tracking_uri}"
            + (f"; it holds: {', '.join(names)}" if names else ": it holds no experiments (run `dvc repro` first)")
        )
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.search_runs(
            experiment_names=[experiment], filter_string=filters, order_by=["attributes.start_time ASC"]
        )
    finally:
        mlflow.set_tracking_uri(previous)


def _col(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def _text(series: pd.Series) -> pd.Series:
    return series.where(series.notna(), "").astype(str)


def _choose_metrics(runs: pd.DataFrame, patterns: Sequence[str] | None) -> list[str]:
    available = [c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()]
    chosen: list[str] = []
    for pattern in patterns or DEFAULT_METRICS:
        matched = sorted(m for m in available if fnmatch.fnmatchcase(m, pattern))
        if not matched and patterns:
            raise ReportError(
                f"no selected run has a metric matching {pattern!r}; "
                f"available: {', '.join(sorted(available)) or 'none'}"
            )
        chosen += [m for m in matched if m not in chosen]
    return chosen


def _differing(runs: pd.DataFrame, always: Sequence[str] = ()) -> list[str]:
    """Params whose value differs across `runs` (a param some runs lack counts as differing), plus `always`."""
    names = sorted(c[len("params.") :] for c in runs.columns if c.startswith("params."))
    return [n for n in names if n in always or _text(runs[f"params.{n}"]).nunique() > 1]


def _key_params(runs: pd.DataFrame) -> list[str]:
    """Params whose value differs across the selected runs, plus train.epochs."""
    return _differing(runs, ALWAYS_PARAMS)


def _commits(runs: pd.DataFrame) -> pd.Series:
    return _text(_col(runs, "tags.genlab.git_commit"))


def runs_table(runs: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """mlflow.search_runs output -> one row per run: identity, git state, key params, metrics."""
    commit = _commits(runs)
    table = pd.DataFrame(
        {
            "run": runs["run_id"].str[:8],
            "run_name": _text(_col(runs, "tags.mlflow.runName")),
            "dvc_exp": _text(_col(runs, "tags.dvc.exp_name")),
            "family": _text(_col(runs, "tags.genlab.family")),
            "dataset": _text(_col(runs, "tags.genlab.dataset")),
            "commit": commit.where(commit == "unknown", commit.str[:8]),
            "dirty": _text(_col(runs, "tags.genlab.git_dirty")),
            "start_time_utc": pd.to_datetime(runs["start_time"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "status": runs["status"],
        }
    )
    for name in _key_params(runs):
        table[name] = _text(_col(runs, f"params.{name}")).values
    for name in _choose_metrics(runs, metrics):
        table[name] = _col(runs, f"metrics.{name}").astype(float).values
    table = table.reset_index(drop=True)
    table.attrs["run_ids"] = list(runs["run_id"])  # the full ids, for what follows a run up in MLflow
    return table


def replicate_runs(runs: pd.DataFrame, metrics: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """The finished runs as seed replicates (oldest first: run, seed, commit, group keys, metrics, group,
    rerun) and the group keys: the params other than seed that differ across these runs."""
    done = runs[runs["status"] == "FINISHED"]
    if done.empty:
        statuses = ", ".join(f"{s} {k}" for s, k in runs["status"].value_counts().items())
        raise ReportError(f"no FINISHED run among the {len(runs)} selected ({statuses}): groups pool finished runs")
    keys = [k for k in _differing(done) if k != replicates.SEED]
    frame = pd.DataFrame(
        {
            "run": done["run_id"].str[:8],
            replicates.SEED: _text(_col(done, f"params.{replicates.SEED}")),
            "commit": _commits(done),
            **{k: _text(done[f"params.{k}"]) for k in keys},
            **{m: _col(done, f"metrics.{m}").astype(float) for m in metrics},
        }
    )
    return replicates.mark_replicates(frame.reset_index(drop=True), keys), keys


def _mean_sd(mean: float, sd: float, n: int, runs: int) -> str:
    if n == 0:
        return ""
    spread = "n/a" if math.isnan(sd) else format_number(sd)
    return f"{format_number(mean)} ± {spread}" + (f" (n = {n})" if n != runs else "")


def groups_display(groups: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """group, n, seeds, commits, reruns, then `mean ± sd` per metric (sd n/a for n = 1)."""
    shown = groups[["group", "n", "seeds", "commits", "reruns"]].astype(str)
    for m in metrics:
        cells = zip(groups[f"{m}_mean"], groups[f"{m}_sd"], groups[f"{m}_n"], groups["n"])
        shown[f"{m} (mean ± sd)"] = [_mean_sd(*cell) for cell in cells]
    return shown


def verdicts_markdown(verdicts: pd.DataFrame) -> str:
    return to_markdown(verdicts[["group", "baseline", "metric", "diff", "ci_low", "ci_high", "p", "verdict"]])


def group_report(
    runs: pd.DataFrame, metrics: Sequence[str], baseline: Sequence[str] | None = None, alpha: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The groups table and every other group against the baseline (KEY=VALUE items; default: the oldest group)."""
    frame, keys = replicate_runs(runs, metrics)
    groups = replicates.group_table(frame, keys, metrics)
    chosen = replicates.pick_baseline(groups, keys, baseline)  # a bad one raises ReplicateError (a GenlabError)
    return groups, replicates.verdict_table(frame, groups, chosen, metrics, alpha)


def build_report(
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    dataset: str | None = None,
    family: str | None = None,
    dvc_exp: str | None = None,
    metrics: Sequence[str] | None = None,
    out_dir: str | Path = paths.REPORTS_DIR,
    group: bool = False,
    baseline: Sequence[str] | None = None,
    alpha: float = 0.05,
    html: bool = False,
) -> pd.DataFrame:
    """Select runs, write out_dir/runs.csv, runs.md and runs.png (each atomically), return the table.
    With `group` (or a `baseline`), also groups.csv/.md and verdicts.csv/.md (see group_report); with
    `html`, runs.html (genlab.reporting.page: the same tables with spreads, each run's grids, the curves).

    Raises ReportError (a GenlabError: stages exit 2) when the experiment is missing, no run
    matches the filters, a requested metric exists in none of the selected runs, or the baseline
    or alpha is bad; all of that is checked before any file is written.
    """
    filters = filter_string(dataset, family, dvc_exp)
    runs = _search(tracking_uri, experiment, filters)
    if runs.empty:
        given = ", ".join(f"{k}={v}" for k, v in (("dataset", dataset), ("family", family), ("dvc_exp", dvc_exp)) if v)
        raise ReportError(
            f"no run in experiment {experiment!r} of {tracking_uri} matches "
            + (given if given else "(no filters): the experiment is empty — run `dvc repro` or `dvc exp run` first")
            + (
                "; loosen the filters (a % in a value is a wildcard) or check the tag values in `mlflow ui`"
                if given
                else ""
            )
        )
    table = runs_table(runs, metrics)
    out = Path(out_dir)
    grouped = None
    if group or baseline:
        chosen = metric_columns(table)
        groups, verdicts = group_report(runs, chosen, baseline, alpha)
        grouped = groups_display(groups, chosen), list(verdicts["verdict"])
        _write_csv(groups, out / "groups.csv")
        atomic.write_text(out / "groups.md", to_markdown(grouped[0]))
        _write_csv(verdicts, out / "verdicts.csv")
        atomic.write_text(out / "verdicts.md", verdicts_markdown(verdicts))
    _write_csv(table, out / "runs.csv")
    atomic.write_text(out / "runs.md", to_markdown(table))
    chart.draw(table, out / "runs.png")
    if html:
        _write_page(tracking_uri, experiment, filters, runs, table, grouped, out / "runs.html")
    return table


def _write_page(uri: str, experiment: str, filters: str, runs, table, grouped, path: Path) -> None:
    from mlflow import MlflowClient

    from genlab.reporting import page as report_page

    page = report_page.collect(MlflowClient(uri), runs, table)
    page.notes = [f"{len(table)} run(s) of experiment {experiment!r}" + (f" where {filters}" if filters else "")]
    if grouped is not None:
        page.groups, page.verdicts = grouped
    report_page.write_page(path, page)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
