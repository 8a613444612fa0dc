"""runs.png: one horizontal bar chart per metric, runs on the y axis, oldest on top as in the table.

All panels are drawn in a single matplotlib Axes whose units are inches, with the bars, error bars, frames
and ticks of every panel as three line collections and the labels as text: one Axes per panel spent most
of a 50-run report's seconds in matplotlib's tick machinery (docs/benchmarks.md §12).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from genlab.core import atomic
from genlab.reporting.tables import format_number, run_labels, with_spread_columns

VALUE_LABELS = 20  # above this many runs, the values are left to runs.md
PANEL_W, TITLE_H, AXIS_H, GAP_W = 4.6, 0.35, 0.35, 0.35  # inches


def _ticks(lo: float, hi: float) -> np.ndarray:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(3).tick_values(lo, hi)


def draw(table: pd.DataFrame, path: str | Path) -> None:
    """Write runs.png for `table` (a report table); a metric's `<metric>_std` is its error bar (± 1 sd)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    pairs = with_spread_columns(table)
    labels = run_labels(table)
    n_runs, n_panels = len(table), max(len(pairs), 1)
    cols = min(3 if n_panels <= 12 else 5, n_panels)
    rows = math.ceil(n_panels / cols)
    # inches per run, run names' points, pixels per inch: many runs make a tall picture, drawn a little coarser
    row_h, font, dpi = (0.28, 8, 110) if n_runs <= VALUE_LABELS else (0.14, 6, 90)
    label_w = 0.2 + 0.0078 * font * max(map(len, labels), default=0)
    plot_h = max(row_h * n_runs, 0.5)
    panel_h = TITLE_H + plot_h + AXIS_H
    width, height = label_w + cols * PANEL_W, 0.5 + rows * panel_h
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # inches from the top left
    bars, whiskers, lines = [], [], []
    title = f"{n_runs} run(s), oldest first" + ("" if n_runs <= VALUE_LABELS else "; values in runs.md")
    ax.text(width / 2, 0.25, title, ha="center", va="center", fontsize=10)
    if not pairs:
        ax.text(width / 2, height / 2, "no metrics logged", ha="center", va="center")
    for i, (name, spread) in enumerate(pairs):
        left = label_w + (i % cols) * PANEL_W
        top = 0.5 + (i // cols) * panel_h + TITLE_H
        x0, x1, y1 = left, left + PANEL_W - GAP_W, top + plot_h
        ys = top + (np.arange(n_runs) + 0.5) * plot_h / max(n_runs, 1)
        values = table[name].to_numpy(dtype=float)
        sds = table[spread].fillna(0).to_numpy(dtype=float) if spread else np.zeros(n_runs)
        logged = ~np.isnan(values)
        ends = np.concatenate([[0.0], values[logged] - sds[logged], values[logged] + sds[logged]])
        ticks = _ticks(float(ends.min()), float(ends.max()) if ends.max() > ends.min() else float(ends.min()) + 1)
        lo, hi = float(ticks[0]), float(ticks[-1])
        x = lambda v, lo=lo, hi=hi, x0=x0, x1=x1: x0 + (np.asarray(v) - lo) / (hi - lo) * (x1 - x0)  # noqa: E731
        bars += [((x(0), y), (x(v), y)) for v, y in zip(values[logged], ys[logged])]
        if spread:
            whiskers += [((x(v - s), y), (x(v + s), y)) for v, s, y in zip(values[logged], sds[logged], ys[logged])]
        lines += [((x0, top), (x1, top)), ((x1, top), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, top))]
        lines.append(((x(0), top), (x(0), y1)))  # zero
        for t in ticks:
            lines.append(((x(t), y1), (x(t), y1 + 0.05)))
            ax.text(x(t), y1 + 0.08, f"{t:g}", ha="center", va="top", fontsize=8)
        ax.text((x0 + x1) / 2, top - 0.08, name + (" (± sd)" if spread else ""), ha="center", va="bottom", fontsize=10)
        for y in ys[~logged]:  # not logged by this run: say so at the panel's left edge
            ax.text(x0 + 0.05, y, "n/a", va="center", ha="left", fontsize=7, color="grey")
        if n_runs <= VALUE_LABELS:
            for v, y in zip(values[logged], ys[logged]):
                ax.text(x(0), y, f" {format_number(v)} ", va="center", ha="left" if v >= 0 else "right", fontsize=7)
        if i % cols == 0:
            for y, label in zip(ys, labels):
                ax.text(x0 - 0.05, y, label, ha="right", va="center", fontsize=font)
    bar_points = 0.7 * plot_h / max(n_runs, 1) * 72  # 70 % of a row
    ax.add_collection(LineCollection(bars, colors="C0", linewidths=bar_points, capstyle="butt"))
    ax.add_collection(LineCollection(whiskers, colors="black", linewidths=0.8))
    ax.add_collection(LineCollection(lines, colors="black", linewidths=0.6))
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})  # 6, the default: 4x the time
