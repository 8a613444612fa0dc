"""What every stage entry point shares: error reporting, the saved model, the run it belongs to."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from genlab import checkpoint, paths
from genlab.config import Config, config_from_dict, load_config
from genlab.data import PreparedData, load_prepared
from genlab.errors import CheckpointError, GenlabError
from genlab.models import Family, build_family
from genlab.runtime import resolve_device, seed_everything


def main(stage: Callable[[], None]) -> None:
    """Run a stage; a GenlabError is the user's to fix, so print it plainly and exit 2."""
    try:
        stage()
    except GenlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def save_model(family: Family, cfg_dict: dict[str, Any], levels: int, data_md5: str) -> None:
    checkpoint.save(
        paths.MODEL,
        {
            "family": family.name,
            "config": cfg_dict,
            "image_shape": list(family.image_shape),
            "levels": levels,
            "data_md5": data_md5,
            "model": {"modules": family.state_dict()["modules"]},
        },
    )


def load_model(device: torch.device) -> tuple[Family, dict[str, Any]]:
    """Rebuild the trained model from its own saved params, not today's params.yaml."""
    saved = checkpoint.load(paths.MODEL, what="model file")
    family = build_family(config_from_dict(saved["config"]), tuple(saved["image_shape"]), saved["levels"], device)
    family.load_state_dict(saved["model"], with_optimizers=False)
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


def load_trained() -> Trained:
    cfg = load_config(paths.PARAMS)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    family, saved = load_model(device)
    data = load_prepared(paths.PREPARED_DIR)
    if data.checksum != saved["data_md5"]:
        raise CheckpointError(
            f"{paths.MODEL} was trained on data {saved['data_md5']} but {paths.PREPARED_DIR} holds {data.checksum}: "
            "retrain with `dvc repro train`"
        )
    return Trained(cfg, device, family, saved, data)


def read_run_id() -> str:
    try:
        return json.loads(paths.RUN_INFO.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise CheckpointError(f"{paths.RUN_INFO} is missing or unreadable: run the train stage first") from None
