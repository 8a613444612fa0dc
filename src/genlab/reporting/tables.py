"""Run tables for reading: numbers rounded for people, Markdown, run labels (genlab.reporting.report writes them)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def metric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]


SPREAD = "_std"  # evaluate's name for a metric's bootstrap sd (docs/metrics.md)


def with_spread_columns(table: pd.DataFrame) -> list[tuple[str, str | None]]:
    """(metric, its `<metric>_std` column or None) for each metric column; a spread column goes with its metric."""
    metrics = metric_columns(table)
    present = set(metrics)
    return [
        (m, m + SPREAD if m + SPREAD in present else None)
        for m in metrics
        if not (m.endswith(SPREAD) and m[: -len(SPREAD)] in present)
    ]


def format_number(value: Any) -> str:
    """Readable rounding: 4 significant digits, integers as integers, NaN as blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, (int, float)):
        return str(value)
    v = float(value)
    if v.is_integer() and abs(v) < 1e12:
        return str(int(v))
    if abs(v) >= 1000:
        return f"{v:.1f}"
    return f"{v:.4g}" if abs(v) < 1 else f"{v:.{max(0, 3 - math.floor(math.log10(abs(v))))}f}"


def to_markdown(table: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return format_number(value).replace("|", "\\|").replace("\n", " ")

    numeric = set(metric_columns(table))
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---:" if c in numeric else "---" for c in table.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def run_labels(table: pd.DataFrame) -> list[str]:
    """Run names for the plot axis; the short run id is added where a name is missing or repeated."""
    names = [n or r for n, r in zip(table["run_name"], table["run"])]
    counts = pd.Series(names).value_counts()
    return [f"{n} ({r})" if counts[n] > 1 else n for n, r in zip(names, table["run"])]
