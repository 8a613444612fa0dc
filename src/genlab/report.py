"""Compare runs: read them from MLflow, write a table (CSV + Markdown) and a bar chart per metric.

    df = build_report(tracking_uri(), dataset="mnist", family="vae")   # -> reports/runs.{csv,md,png}
    build_report(tracking_uri(), group=True, baseline=["vae.beta=1.0"])  # + groups.{csv,md}, verdicts.{csv,md}

Filters are exact tag matches (`genlab.dataset`, `genlab.family`, `dvc.exp_name`); a value with
`%` is a SQL LIKE pattern (`dvc_exp="beta-%"`). Metrics default to every `test/*` metric present
plus the final `val/elbo`; `metrics` takes names or shell-style patterns (`test/*`, `val/elbo`).
With `group`, finished runs whose params differ only in `seed` are pooled as seed replicates and
each group is compared with a baseline (genlab.replicates holds the statistics).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genlab import atomic, paths, replicates
from genlab.errors import GenlabError
from genlab.tables import format_number, metric_columns, run_labels, to_markdown, with_spread_columns

EXPERIMENT = "genlab"  # = genlab.tracking.EXPERIMENT; not imported from there, as it pulls in torchvision

TAGS = {"dataset": "genlab.dataset", "family": "genlab.family", "dvc_exp": "dvc.exp_name"}
ALWAYS_PARAMS = ("train.epochs",)
DEFAULT_METRICS = ("test/*", "val/elbo")
VALUE_LABELS = 20  # above this many runs, runs.png leaves the values to runs.md
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


def plot(table: pd.DataFrame, path: str | Path) -> None:
    """One horizontal bar chart per metric, runs on the y axis, oldest on top as in the table; a metric's
    `<metric>_std` is its error bar (± 1 sd), not a panel of its own. Each value is printed beside its bar
    up to VALUE_LABELS runs (runs.md has them all). Bars and error bars are one line collection per panel
    and only the left column carries run names: 50 runs × 40 metrics draw in about a second."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    pairs = with_spread_columns(table)
    labels = run_labels(table)
    n_runs, n_metrics = len(table), max(len(pairs), 1)
    cols = min(3 if n_metrics <= 12 else 5, n_metrics)
    rows = math.ceil(n_metrics / cols)
    row_h, font = (0.28, 8) if n_runs <= VALUE_LABELS else (0.14, 6)  # inches per run, run names' points
    panel_h, panel_w, label_w = 1.2 + row_h * n_runs, 4.6, 0.2 + 0.0078 * font * max(map(len, labels), default=0)
    width, height = panel_w * cols + label_w, panel_h * rows + 0.6
    fig = Figure(figsize=(width, height))  # fixed margins: constrained layout took most of a report's seconds
    fig.subplots_adjust(left=label_w / width, right=1 - 0.15 / width, top=1 - 0.55 / height,
                        bottom=0.35 / height, wspace=0.08, hspace=0.6 / panel_h)  # fmt: skip
    axes = fig.subplots(rows, cols, squeeze=False)
    positions = np.arange(n_runs)
    bar_width = 0.7 * 72 * (panel_h - 0.6) / max(n_runs, 1)  # 70 % of a row, in points
    for i, ax in enumerate(axes.flat):
        ax.set_ylim(n_runs - 0.5, -0.5)  # first (oldest) run on top
        ax.set_yticks([])
        ax.xaxis.set_major_locator(MaxNLocator(3))
        if i % cols == 0:  # run names as plain text: a tick per run per row of panels cost a second at 50 runs
            names = blended_transform_factory(ax.transAxes, ax.transData)
            for y, label in zip(positions, labels):
                ax.text(-0.02, y, label, transform=names, ha="right", va="center", fontsize=font)
        if i >= len(pairs):
            if pairs:
                ax.set_visible(False)
            else:
                ax.text(0.5, 0.5, "no metrics logged", ha="center", va="center", transform=ax.transAxes)
            continue
        name, spread = pairs[i]
        values = table[name].to_numpy(dtype=float)
        logged = ~np.isnan(values)
        ax.hlines(positions[logged], 0, values[logged], color="C0", linewidth=bar_width)
        if spread:
            sds = table[spread].fillna(0).to_numpy(dtype=float)[logged]
            v = values[logged]
            ax.hlines(positions[logged], v - sds, v + sds, color="black", linewidth=0.8)
        na = blended_transform_factory(ax.transAxes, ax.transData)
        for y in positions[~logged]:  # not logged by this run: say so at the panel's left edge
            ax.text(0.01, y, "n/a", transform=na, va="center", ha="left", fontsize=7, color="grey")
        if n_runs <= VALUE_LABELS:
            for y, v in zip(positions[logged], values[logged]):
                ax.text(0, y, f" {format_number(v)} ", va="center", ha="left" if v >= 0 else "right", fontsize=7)
        ax.set_title(name + (" (± sd)" if spread else ""), fontsize=10)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.tick_params(labelsize=8)
    values_note = "" if n_runs <= VALUE_LABELS else "; values in runs.md"
    fig.suptitle(f"{n_runs} run(s), oldest first{values_note}", fontsize=10, y=1 - 0.12 / height)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, pil_kwargs={"compress_level": 1})  # 6, the default, took 4× the time


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
    `html`, runs.html (genlab.report_page: the same tables with spreads, each run's grids, the curves).

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
    plot(table, out / "runs.png")
    if html:
        _write_page(tracking_uri, experiment, filters, runs, table, grouped, out / "runs.html")
    return table


def _write_page(uri: str, experiment: str, filters: str, runs, table, grouped, path: Path) -> None:
    from mlflow import MlflowClient

    from genlab import report_page

    page = report_page.collect(MlflowClient(uri), runs, table)
    page.notes = [f"{len(table)} run(s) of experiment {experiment!r}" + (f" where {filters}" if filters else "")]
    if grouped is not None:
        page.groups, page.verdicts = grouped
    report_page.write_page(path, page)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
