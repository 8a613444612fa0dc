"""Trained models a family depends on besides its own weights (the domain classifier, a tokenizer).

A family's params section declares them (`FamilyConfig.UPSTREAM`, each a `schema.Upstream`): a network one of
the pipeline's own stages trains lives at `ModelPaths.<stage>` and is a network file (`evaluation.classifier`);
any other is a trained genlab model whose file the family's params key of the same name holds (e.g. a prior's
`tokenizer: models/tokenizer.pt`). The train stage loads each, checks it was trained on the same prepared data,
hands it to `Family.attach` and records its file md5 in the model file and the MLflow run; evaluate
and sample load the same files and refuse ones whose md5 differs from the recorded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab.core import paths
from genlab.core.errors import CheckpointError
from genlab.core.schema import Upstream
from genlab.data.checksums import md5_file
from genlab.evaluation.classifier import load_classifier
from genlab.evaluation.model_file import load_model, model_run_id
from genlab.models import Family


def location(family: Family, needed: Upstream, where: paths.ModelPaths) -> Path:
    """Where `needed` of `family`, trained as model `where.name`, lives."""
    return getattr(where, needed.stage) if needed.stage else Path(getattr(family.cfg, needed.name))


def _load(needed: Upstream, path: Path, device: torch.device, data_md5: str, today: Any) -> Any:
    if needed.stage:
        return load_classifier(path, device, data_md5=data_md5)
    model, saved = load_model(path, device, today)  # a trained genlab model: the same file format as our own
    if saved["data_md5"] != data_md5:
        raise CheckpointError(f"{path} was trained on data {saved['data_md5']}, not on today's {data_md5}: retrain it")
    return model


def attach(
    family: Family,
    where: paths.ModelPaths,
    device: torch.device,
    data_md5: str,
    today: Any,
    recorded: dict[str, str] | None = None,
) -> dict[str, str]:
    """Load and attach every upstream model of `family`, trained as model `where.name` (`today`: today's
    Config); returns name -> file md5. With `recorded` (what the model file holds), an upstream file that
    changed since training is an error."""
    md5s = {}
    for needed in family.upstream:
        name, path = needed.name, location(family, needed, where)
        if not path.is_file():
            raise CheckpointError(
                f"{family.name} needs its {name} at {path}, which does not exist: train it first (`dvc repro`)"
            )
        md5s[name] = md5_file(path)
        if recorded is not None and recorded.get(name) != md5s[name]:
            raise CheckpointError(
                f"{path} changed since the {family.name} model was trained "
                f"(md5 {recorded.get(name)} then, {md5s[name]} now): retrain it with `dvc repro`"
            )
        family.attach(name, _load(needed, path, device, data_md5, today))
    return md5s


def run_links(family: Family, where: paths.ModelPaths) -> dict[str, str]:
    """MLflow tags linking a run to the runs that trained its upstream genlab models (a tokenizer): the run
    that trained each model file (found by its md5, `model_file`), the first one also as MLflow's parent run."""
    tags = {}
    for needed in family.upstream:
        run_id = None if needed.stage else model_run_id(location(family, needed, where))
        if run_id:
            tags[f"genlab.upstream.{needed.name}_run"] = run_id
            tags.setdefault("mlflow.parentRunId", run_id)
    return tags
