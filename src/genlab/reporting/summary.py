"""The end-of-run summary: a run's key test numbers beside their floors, each with a word, whether training
had settled, where the results are and what to try next.

The sample stage, the last of a pipeline, prints it and logs it to the train run (summary.md and the run's
description); `python -m genlab.reporting.summary [--name NAME]` prints it again from the files, e.g. after a
`dvc repro` that found everything up to date.

Words are rules of thumb, stated here so that nobody reads more into them:
- a Fréchet distance is "at the real-data floor" when it lies within 2 combined bootstrap sd of the floor
  (real train vs real test images at the same n), "near" it below 2x the floor, "well above" below 5x,
  "far above" beyond;
- the memorisation check's Z (docs/metrics.md): below -3 the samples sit closer to the training set than
  unseen real images can, i.e. the model copies its training data;
- training "still improving" / "got worse" / "settled": the mean of the progress column (val_loss, else
  val_domain_fid; lower is better) over the last tenth of the epochs against the tenth before, by more than
  5 % of the whole run's improvement either way.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import pandas as pd

from genlab.core import paths

PROGRESS_COLUMNS = ("val_loss", "val_domain_fid")


def _pm(values: dict[str, float], key: str, digits: int = 1) -> str:
    sd = values.get(f"{key}_std")
    return f"{values[key]:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


def floor_word(value: float, sd: float, floor: float, floor_sd: float) -> str:
    if abs(value - floor) <= 2 * math.hypot(sd, floor_sd):
        return "at the real-data floor"
    ratio = value / floor if floor > 0 else math.inf
    where = "near" if ratio < 2 else "well above" if ratio < 5 else "far above"
    return f"{ratio:.1f}x the floor, {where} it" if math.isfinite(ratio) else "above the floor"


def _distance(test: dict[str, float], key: str) -> str | None:
    """The Fréchet distance `key` (of samples or of reconstructions) read against the real-data floor."""
    floor = "domain_fid_floor"
    if key not in test or floor not in test:
        return None
    word = floor_word(test[key], test.get(f"{key}_std", 0.0), test[floor], test.get(f"{floor}_std", 0.0))
    return f"FID {_pm(test, key)} against the real-data floor {_pm(test, floor)}: {word}"


def copy_word(z: float) -> str:
    if z < -3:
        return "closer to the training set than unseen real images can be: the model copies its training data"
    if z <= 3:
        return "as close to the training set as unseen real images: no sign of copying"
    return "farther from the training set than unseen real images: no sign of copying"


def progress(history: pd.DataFrame) -> str | None:
    """How the run ended, from its history (one row per epoch)."""
    column = next((c for c in PROGRESS_COLUMNS if c in history and history[c].notna().sum() >= 4), None)
    if column is None:
        return None
    values = history[column].dropna().to_numpy(dtype=float)
    w = max(1, len(values) // 10)
    last, before = values[-w:].mean(), values[-2 * w : -w].mean()
    scale = abs(values[0] - values.min()) or abs(values[0]) or 1.0
    epochs = int(history["epoch"].iloc[-1]) if "epoch" in history else len(history)
    trend = f"{column} {before:.4g} -> {last:.4g} over the last {2 * w} of {len(values)} points ({epochs} epochs)"
    if last < before - 0.05 * scale:
        return f"{trend}: still improving, more epochs would help"
    if last > before + 0.05 * scale:
        return f"{trend}: got worse at the end (overfitting or an unstable run)"
    return f"{trend}: settled at these settings"


def findings(test: dict[str, float], history: pd.DataFrame | None) -> list[tuple[str, str]]:
    """(topic, sentence) for each key number the run has."""
    out = []
    if line := _distance(test, "domain_fid"):
        out.append(("samples", line))
    if {"precision", "recall"} <= test.keys():
        line = f"precision {_pm(test, 'precision', 2)} (share of samples that look real), "
        out.append(("samples", line + f"recall {_pm(test, 'recall', 2)} (share of real images the samples cover)"))
    if "domain_copy_z" in test:
        out.append(("memorisation", f"copy Z {test['domain_copy_z']:.1f}: {copy_word(test['domain_copy_z'])}"))
    if line := _distance(test, "domain_rfid"):
        out.append(("reconstructions", line))
    if {"recon_accuracy", "real_accuracy"} <= test.keys():
        line = f"the domain classifier recognises {100 * test['recon_accuracy']:.1f} % of them "
        out.append(("reconstructions", line + f"({100 * test['real_accuracy']:.1f} % of the real test images)"))
    if "elbo" in test:
        bpd = f" ({test['bpd']:.3f} bits/dim)" if "bpd" in test else ""
        out.append(("likelihood", f"test ELBO {test['elbo']:.2f} nats/image{bpd}"))
    elif "bpd" in test:
        out.append(("likelihood", f"test bound {_pm(test, 'bpd', 3)} bits/dim"))
    if history is not None and (line := progress(history)):
        out.append(("training", line))
    return out


def render(
    title: str, facts: list[tuple[str, str]], where: paths.ModelPaths, run_url: str | None, seed: int = 0
) -> str:
    width = max((len(topic) for topic, _ in facts), default=0)
    lines = [f"Summary: {title}"]
    lines += [f"  {topic:<{width}}  {sentence}" for topic, sentence in facts]
    lines += [
        f"Results: {where.samples}/ (figures), {where.eval_metrics} (every number, with its spread *_std), "
        f"{where.history}",
    ]
    if run_url:
        lines.append(f"MLflow:  {run_url}")
    # Name the pipeline that made this model: a bare or default `dvc exp run` would rerun another one.
    pipeline = "" if where.pipeline == paths.PIPELINE else f" --pipeline {where.pipeline}"
    lines += [
        f"Next:    dvc exp run {where.pipeline} -S seed={(seed + 1) % 2**32}   "
        "(another seed: how far a number moves between runs)",
        f"         python -m genlab.reporting.replicates{pipeline} --seeds 0 1 2 -S <key>=<value> -n NAME "
        "(a variant over seeds),",
        "         then python stages/report.py --group --html   (the verdict, and the grids side by side)",
    ]
    return "\n".join(lines) + "\n"


def summary(cfg: Any, where: paths.ModelPaths, run_url: str | None) -> str:
    test = json.loads(where.eval_metrics.read_text()).get("test", {}) if where.eval_metrics.is_file() else {}
    history = pd.read_csv(where.history) if where.history.is_file() else None
    title = f"{cfg.model.family} on {cfg.data.name}, {cfg.train.epochs} epochs, seed {cfg.seed}"
    return render(title, findings(test, history), where, run_url, cfg.seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.reporting.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=paths.DEFAULT_MODEL, help="the model (default: %(default)s)")
    args = parser.parse_args(argv)
    from genlab.config.experiment import load_config
    from genlab.evaluation.model_file import read_run_id
    from genlab.tracking import store

    where = paths.model_paths(args.name)
    run_id = read_run_id(where)
    print(summary(load_config(paths.PARAMS), where, store.run_url(run_id)), end="")


if __name__ == "__main__":
    from genlab.core.errors import exit_on_error

    exit_on_error(main)
