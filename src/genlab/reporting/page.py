"""reports/runs.html: one self-contained page that puts runs side by side.

    page = collect(client, runs, table)            # each run's grids and curves, read from MLflow
    write_page("reports/runs.html", page)          # the metrics with spreads, the grids, the curves

The metrics table has one row per run, each metric as `value ± <metric>_std` where evaluate wrote a spread;
then each run's final sample and reconstruction grids (drawn from the noise of the run's seed, so runs at one
seed are comparable cell by cell) and the per-epoch curves of every run overlaid. Images are inlined as data:
URIs, so the page opens offline, from a mail attachment or from MLflow's artifact view alike.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from genlab.core import atomic
from genlab.reporting.tables import format_number, metric_columns, run_labels, with_spread_columns
from genlab.tracking import store

FIGURES = ("samples.png", "reconstructions.png")  # the sample stage's grids, under a run's artifacts samples/
CURVE_PREFIXES = ("val/", "train/")  # per-epoch metrics; the others are logged once
MAX_CURVES = 9


@dataclass
class Page:
    table: pd.DataFrame  # genlab.reporting.report.runs_table: one row per run
    run_ids: list[str]  # full MLflow ids, in the table's order
    figures: dict[str, dict[str, bytes]]  # run id -> figure name -> PNG bytes (absent when not logged)
    curves: bytes | None  # the overlaid training curves as PNG, None when no run logged a curve
    title: str = "genlab: runs compared"
    notes: list[str] = field(default_factory=list)  # what was selected, from where
    groups: pd.DataFrame | None = None  # genlab.reporting.report.groups_display, with --group
    verdicts: Sequence[str] = ()


def with_spreads(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: each metric with a `<metric>_std` column as one `value ± sd` column."""
    shown = pd.DataFrame({c: table[c] for c in table.columns if c not in set(metric_columns(table))})
    for metric, spread in with_spread_columns(table):
        values = table[metric]
        if spread is None:
            shown[metric] = [format_number(v) for v in values]
            continue
        shown[f"{metric} ± sd"] = [
            format_number(v) + ("" if math.isnan(sd) or math.isnan(v) else f" ± {format_number(sd)}")
            for v, sd in zip(values, table[spread])
        ]
    return shown


def curve_keys(runs: pd.DataFrame) -> list[str]:
    """The per-epoch metrics any of `runs` (mlflow.search_runs output) logged: validation first."""
    logged = [c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()]
    keys = [k for prefix in CURVE_PREFIXES for k in sorted(logged) if k.startswith(prefix)]
    return keys[:MAX_CURVES]


def plot_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], labels: dict[str, str]) -> bytes:
    """One panel per metric, one line per run (x = epoch): `histories[key][run_id]` = [(step, value), ...]."""
    from matplotlib.figure import Figure

    keys = list(histories)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.0 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    lines = {}
    for ax, key in zip(axes.flat, keys):
        for i, (run_id, label) in enumerate(labels.items()):
            points = sorted(histories[key].get(run_id, []))
            if points:
                (lines[label],) = ax.plot(*zip(*points), color=f"C{i % 10}", linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.legend(lines.values(), lines.keys(), loc="outside lower center", ncols=min(4, len(lines)), fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def collect(client: Any, runs: pd.DataFrame, table: pd.DataFrame) -> Page:
    """Read each run's grids and curve histories from MLflow (`client`: an MlflowClient of the store)."""
    run_ids = list(runs["run_id"])
    figures: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="genlab-report-") as tmp, store.quiet_downloads():
        for run_id in run_ids:
            logged = {Path(info.path).name for info in client.list_artifacts(run_id, "samples")}
            figures[run_id] = {
                name: Path(client.download_artifacts(run_id, f"samples/{name}", tmp)).read_bytes()
                for name in FIGURES
                if name in logged
            }
    keys = curve_keys(runs)
    histories = {
        key: {run_id: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for run_id in run_ids}
        for key in keys
    }
    labels = dict(zip(run_ids, run_labels(table)))
    return Page(table, run_ids, figures, plot_curves(histories, labels) if keys else None)


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _html_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(False)
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}
.scroll{overflow-x:auto;max-width:100%}
#figures img{width:260px;image-rendering:pixelated}
#curves{max-width:100%}
.note{color:#555}
"""


def render(page: Page) -> str:
    """The page as one HTML document (no external resource)."""
    table = page.table
    identity = ["run", "dvc_exp"] + [c for c in table.columns if "." in c and "/" not in c]  # the name heads the cell
    labels = run_labels(table)
    rows = []
    for i, run_id in enumerate(page.run_ids):
        about = "<br>".join(html.escape(f"{c}: {table[c].iloc[i]}") for c in identity if str(table[c].iloc[i]))
        cells = [f"<td><b>{html.escape(labels[i])}</b><br>{about}</td>"]
        for name in FIGURES:
            png = page.figures.get(run_id, {}).get(name)
            cells.append(f"<td>{_image(png, f'{labels[i]}: {name}')}</td>" if png else '<td class="note">none</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    heads = "".join(f"<th>{html.escape(name.removesuffix('.png'))}</th>" for name in FIGURES)
    parts = [
        f"<h1>{html.escape(page.title)}</h1>",
        *(f'<p class="note">{html.escape(note)}</p>' for note in page.notes),
        "<h2>Metrics</h2>",
        '<p class="note">One row per run, oldest first. <i>value ± sd</i>: the run\'s bootstrap sd over the '
        "generated and real sets (test/bootstrap_resamples resamples; docs/metrics.md). It says how far another "
        "draw of the same number of images moves the number; only seed replicates (--group) say whether a "
        "variant is better.</p>",
        f'<div class="scroll">{_html_table(with_spreads(table), "metrics")}</div>',
    ]
    if page.groups is not None:
        parts += [
            "<h2>Seed groups</h2>",
            f'<div class="scroll">{_html_table(page.groups, "groups")}</div>',
            "<h2>Verdicts</h2>",
            "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in page.verdicts) + "</ul>"
            if page.verdicts
            else '<p class="note">only one group: nothing to compare</p>',
        ]
    parts += [
        "<h2>Samples and reconstructions</h2>",
        f'<table id="figures"><thead><tr><th>run</th>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>',
        "<h2>Training curves</h2>",
        _image(page.curves, "training curves").replace("<img", '<img id="curves"', 1)
        if page.curves
        else '<p class="note">no run logged a per-epoch metric</p>',
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page.title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_page(path: str | Path, page: Page) -> None:
    stamp = f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    atomic.write_text(path, render(Page(**{**page.__dict__, "notes": [*page.notes, stamp]})))
