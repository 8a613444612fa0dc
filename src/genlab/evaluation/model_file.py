"""The trained model file and the run it belongs to: what train writes and evaluate/sample start from.

The file carries the params the model was trained with (the train stage's view), so evaluate and
sample rebuild the network from those, not from today's params.yaml; only the family's other keys
(evaluation and sampling knobs, declared for those stages) come from today's params.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genlab.core import checkpoint, paths
from genlab.core.errors import CheckpointError, ConfigError
from genlab.core.schema import build
from genlab.data.checksums import md5_file
from genlab.models import FAMILIES, DataSpec, Family, build_family
from genlab.tracking import store

if TYPE_CHECKING:
    from genlab.config.experiment import Config


def save_model(
    where: paths.ModelPaths, family: Family, train_view: dict[str, Any], data_md5: str, upstream_md5: dict[str, str]
) -> None:
    checkpoint.save(
        where.model,
        {
            "family": family.name,
            "config": train_view,
            "image_shape": list(family.image_shape),
            "levels": family.levels,
            "data_md5": data_md5,
            "upstream_md5": upstream_md5,
            "model": family.state_dict(),
        },
    )


def load_model(path, device: torch.device, today: Config) -> tuple[Family, dict[str, Any]]:
    """Rebuild a trained model from its own saved params: the family's training keys from the model
    file, its other keys (evaluation, sampling) from today's params."""
    saved = checkpoint.load(path, what="model file")
    name = saved.get("family")
    if name not in FAMILIES:
        raise CheckpointError(
            f"{path} holds a model of family {name!r}, which this code does not know: {checkpoint.RETRAIN}"
        )
    section = {**dataclasses.asdict(getattr(today, name)), **saved["config"][name]}
    try:
        cfg = build(FAMILIES[name].config_class, section, f"{name}.", require_all=False)
    except ConfigError as exc:
        raise ConfigError(f"today's params do not fit the model in {path}: {exc}") from None
    family = build_family(name, cfg, DataSpec(tuple(saved["image_shape"]), saved["levels"]), device)
    try:
        family.load_state_dict(saved["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} does not match its own params ({str(exc).splitlines()[0]}): {checkpoint.RETRAIN}"
        ) from None
    family.train(False)
    return family, saved


MODEL_MD5_TAG = "genlab.model_md5"  # on the train run: the md5 of the model file it wrote


def _run_of(model_file: Path) -> tuple[str | None, str]:
    """(id of the latest FINISHED run tagged with the model file's md5, or None; the md5).

    The model file is the link to its run, not a file holding the run id: an id is random per run, so a
    DVC-tracked copy of it changed dvc.lock on every retrain, even one that reproduced the model byte for
    byte (a fresh clone's `make run`). A model file restored by `dvc checkout` or `dvc exp apply` finds the
    run that trained it; identical bytes from two runs (a deterministic retrain) are the same model, and the
    latest run is the one that just trained it."""
    from mlflow import MlflowClient  # imported late: it costs seconds, and load_model does not need it

    md5 = md5_file(model_file)
    uri = store.tracking_uri(store.repo_root())
    with store.store_errors(uri):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(store.experiment_name())
        if experiment is None:
            return None, md5
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.`{MODEL_MD5_TAG}` = '{md5}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return (runs[0].info.run_id if runs else None), md5


def read_run_id(where: paths.ModelPaths) -> str:
    """The MLflow run that trained `where.model`: evaluate and sample add to it."""
    if not where.model.is_file():
        raise CheckpointError(f"{where.model} does not exist: run the train stage first (`dvc repro`)")
    run_id, md5 = _run_of(where.model)
    if run_id is None:
        raise CheckpointError(
            f"no finished MLflow run in {store.display_uri(store.tracking_uri())} trained {where.model} "
            f"(md5 {md5}, tag {MODEL_MD5_TAG}): it was trained elsewhere or its run was deleted; point "
            "MLFLOW_TRACKING_URI at the store that holds its run, or retrain it (`dvc repro --force` its train stage)"
        )
    return run_id


def model_run_id(model_file) -> str | None:
    """The MLflow run that trained the model in `model_file` (models/<name>.pt), if the store holds it."""
    return _run_of(Path(model_file))[0] if Path(model_file).is_file() else None
