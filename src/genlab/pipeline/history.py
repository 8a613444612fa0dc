"""The training record (train's cached output) and the per-epoch files drawn from it: metrics/train_history.csv
(one row per epoch, every train/val metric) and metrics/curves/<metric>.csv (epoch, train, val: the DVC plots).

The files come from a stage of their own, `history`, because DVC keeps a run cache only for a stage whose
uncached outputs are all metrics or plots: `train` (model, record, train.json, machine.json) is then restored
from the run cache when an experiment comes back to params, data and code it trained before, and this stage
redraws the files in a second. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from genlab.core import atomic, paths
from genlab.core.errors import CheckpointError


def save_record(where: paths.ModelPaths, history: list[dict[str, Any]], curves: dict[str, str]) -> None:
    """The rows `fit` returned and the family's curves (name -> unit), in the order it draws them (keys unsorted:
    the order of a row's keys is the order of the CSV's columns)."""
    atomic.write_text(where.record, json.dumps({"curves": list(curves), "history": history}, indent=1) + "\n")


def write_table(table: pd.DataFrame, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_history(where: paths.ModelPaths) -> pd.DataFrame:
    """train_history.csv and one curve file per curve with values (e.g. no domain_fid with gan.eval_every = 0)."""
    if not where.record.is_file():
        raise CheckpointError(f"{where.record} does not exist: train the model first (`dvc repro`)")
    record = json.loads(where.record.read_text())
    table = pd.DataFrame(record["history"])
    write_table(table, where.history)
    where.curves.mkdir(parents=True, exist_ok=True)
    for name in record["curves"]:
        cols = {split: f"{split}_{name}" for split in ("train", "val") if f"{split}_{name}" in table}
        if not cols:
            continue
        curve = table[["epoch", *cols.values()]].rename(columns={v: k for k, v in cols.items()})
        write_table(curve.dropna(subset=list(cols), how="all"), where.curves / f"{name}.csv")
    return table
