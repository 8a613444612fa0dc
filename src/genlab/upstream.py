"""Trained models a family depends on besides its own weights (the domain classifier, a tokenizer).

A family declares them by name in `Family.upstream`; where each lives is `SHARED` for the networks the
pipeline's own stages train (the domain classifier, shared by every model; the perceptual network, one per
model that uses it: `ModelPaths.perceptual`) and otherwise the family's params key of the same name (e.g. a
prior's `tokenizer: models/tokenizer.pt`). The train stage loads each, checks it was trained on the same prepared data,
hands it to `Family.attach` and records its file md5 in the model file and the MLflow run; evaluate
and sample load the same files and refuse ones whose md5 differs from the recorded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab import paths
from genlab.data.checksums import md5_file
from genlab.errors import CheckpointError
from genlab.models import Family

SHARED = ("classifier", "perceptual")  # trained by the pipeline's own stages


def location(family: Family, name: str, where: paths.ModelPaths) -> Path:
    """Where upstream model `name` of `family`, trained as model `where.name`, lives."""
    if name in SHARED:
        return paths.CLASSIFIER if name == "classifier" else where.perceptual
    return Path(getattr(family.cfg, name))


def _load(family: Family, name: str, path: Path, device: torch.device, data_md5: str, today: Any) -> Any:
    if name in SHARED:
        from genlab.quality.classifier import load_classifier

        return load_classifier(path, device, data_md5=data_md5)
    from genlab.trained import load_model  # a trained genlab model: the same file format as our own

    model, saved = load_model(path, device, today)
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
    for name in family.upstream:
        path = location(family, name, where)
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
        family.attach(name, _load(family, name, path, device, data_md5, today))
    return md5s


def run_links(family: Family, where: paths.ModelPaths) -> dict[str, str]:
    """MLflow tags linking a run to the runs that trained its upstream genlab models (a tokenizer): the run
    that trained each model file (found by its md5, genlab.trained), the first one also as MLflow's parent run."""
    from genlab.trained import model_run_id

    tags = {}
    for name in family.upstream:
        if name in SHARED:
            continue
        run_id = model_run_id(location(family, name, where))
        if run_id:
            tags[f"genlab.upstream.{name}_run"] = run_id
            tags.setdefault("mlflow.parentRunId", run_id)
    return tags
