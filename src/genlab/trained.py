"""The trained model file and the run it belongs to: what train writes and evaluate/sample start from.

The file carries the params the model was trained with (the train stage's view), so evaluate and
sample rebuild the network from those, not from today's params.yaml; only the family's other keys
(evaluation and sampling knobs, declared for those stages) come from today's params.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlab import checkpoint, paths, upstream
from genlab.config import Config, load_config
from genlab.data import PreparedData, load_prepared
from genlab.errors import CheckpointError, ConfigError
from genlab.models import FAMILIES, DataSpec, Family, build_family
from genlab.runtime import resolve_device, seed_everything
from genlab.schema import build


def stage_args(description: str) -> argparse.Namespace:
    """--name (which model's files) and --family (a fixed family instead of model.family), for the
    train, evaluate and sample stages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--name",
        default=paths.DEFAULT_MODEL,
        help="the model's name: models/<name>.pt etc. (default: the top-level model)",
    )
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), help="train this family instead of params.yaml's model.family"
    )
    return parser.parse_args()


def stage_config(family: str | None) -> Config:
    """params.yaml, validated, with model.family replaced by `family` when a stage fixes it."""
    return load_config(paths.PARAMS, overrides={"model.family": family} if family else None)


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


@dataclass(frozen=True)
class Trained:
    """What evaluate and sample start from: today's params, the trained model and its data."""

    cfg: Config
    device: torch.device
    family: Family
    saved: dict[str, Any]  # the model file: includes the params the model was trained with
    data: PreparedData
    paths: paths.ModelPaths
    upstream_md5: dict[str, str]  # the md5 of each upstream model file (genlab.upstream)


def load_trained(stage: str, name: str, family: str | None) -> Trained:
    cfg = stage_config(family)
    seed_everything(cfg.seed, f"{stage}_global")
    device = resolve_device(cfg.device)
    where = paths.model_paths(name)
    model, saved = load_model(where.model, device, cfg)
    if model.name != cfg.model.family:
        by_hand = "python stages/train.py" + ("" if name == paths.DEFAULT_MODEL else f" --name {name}")
        raise CheckpointError(
            f"{where.model} holds a {model.name} model but the family asked for is {cfg.model.family}: "
            f"retrain it with `dvc repro` (or {by_hand})"
        )
    data = load_prepared(paths.PREPARED_DIR)
    if data.checksum != saved["data_md5"]:
        raise CheckpointError(
            f"{where.model} was trained on data {saved['data_md5']} but {paths.PREPARED_DIR} holds {data.checksum}: "
            f"{checkpoint.RETRAIN}"
        )
    md5s = upstream.attach(model, device, data.checksum, cfg, recorded=saved.get("upstream_md5", {}))
    return Trained(cfg, device, model, saved, data, where, md5s)


def read_run_id(where: paths.ModelPaths) -> str:
    try:
        return json.loads(where.run_info.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise CheckpointError(f"{where.run_info} is missing or unreadable: run the train stage first") from None


def model_run_id(model_file) -> str | None:
    """The MLflow run that trained the model in `model_file` (models/<name>.pt), if its run.json is there."""
    try:
        return read_run_id(paths.model_paths(Path(model_file).stem))
    except CheckpointError:
        return None
