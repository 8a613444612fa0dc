"""DVC stage `train`: fit the model family on the prepared data, tracked in MLflow."""

import pandas as pd

from genlab import atomic, machine, paths, resume, stage, tracking
from genlab.config import load_config
from genlab.data import load_prepared
from genlab.models import build_family
from genlab.quality.classifier import load_classifier
from genlab.quality.scoring import fid_monitor
from genlab.runtime import resolve_device, seed_everything
from genlab.training import fit, input_levels


def write_curves(table: pd.DataFrame, curves: dict[str, str]) -> None:
    """metrics/curves/<metric>.csv with columns epoch, train, val: the DVC plots, whatever the family."""
    paths.CURVES_DIR.mkdir(parents=True, exist_ok=True)
    for name in curves:
        cols = {split: f"{split}_{name}" for split in ("train", "val") if f"{split}_{name}" in table}
        if not cols:  # e.g. domain_fid with gan.eval_every = 0
            continue
        curve = table[["epoch", *cols.values()]].rename(columns={v: k for k, v in cols.items()})
        with atomic.atomic_path(paths.CURVES_DIR / f"{name}.csv") as tmp:
            curve.dropna(subset=list(cols), how="all").to_csv(tmp, index=False)


def run() -> None:
    cfg = load_config(paths.PARAMS)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = load_prepared(paths.PREPARED_DIR)
    levels = input_levels(data, cfg)
    family = build_family(cfg, data.image_shape, levels, device)

    state = resume.resumable_state(cfg, family.name)
    fingerprint = machine.fingerprint(device)
    if state is not None:
        tracker = resume.reopen(state, cfg)
        tracker.set_tags({"genlab.resumed_on": machine.describe(fingerprint)})
    else:
        tags = tracking.run_tags(cfg, data.checksum, device, fingerprint)
        tracker = tracking.MlflowTracker.create(cfg, tags, run_name=tracking.run_name(cfg, tags))
        resume.started(tracker.run_id)
        tracker.log_text(tracking.pip_freeze(), "environment/requirements.txt")
    print(f"MLflow run {tracker.run_id} in {tracker.uri}")

    scorer = None
    if family.fid_every:
        classifier = load_classifier(paths.CLASSIFIER, device, data_md5=data.checksum)
        scorer = fid_monitor(classifier, data.to_unit(data.val.images), family.fid_samples, device, cfg.seed + 7)

    with tracker.active():
        history = fit(
            family, data, cfg, checkpoint_path=paths.CHECKPOINT, tracker=tracker,
            run_id=tracker.run_id, resume_state=state, scorer=scorer,
        )
        stage.save_model(family, cfg.to_dict(), levels, data.checksum)
        last = history[-1]
        summary = {"epochs": len(history)}
        for split in ("train", "val"):
            summary[split] = {k[len(split) + 1 :]: v for k, v in last.items() if k.startswith(split + "_")}
        atomic.write_json(paths.TRAIN_METRICS, summary)
        atomic.write_json(paths.MACHINE, fingerprint)
        table = pd.DataFrame(history)
        with atomic.atomic_path(paths.TRAIN_HISTORY) as tmp:
            table.to_csv(tmp, index=False)
        write_curves(table, family.curves)
        atomic.write_json(paths.RUN_INFO, {"run_id": tracker.run_id})
        tracker.log_artifact(paths.MODEL, "model")
        tracker.log_artifact(paths.TRAIN_HISTORY, "metrics")
    resume.finished(tracker.run_id)


if __name__ == "__main__":
    stage.main(run)
