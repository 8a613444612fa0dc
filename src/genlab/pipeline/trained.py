"""What evaluate and sample start from: today's params, the trained model (with its upstream models attached,
each checked against the md5 the model file recorded, and set up as `sample.precision` and `sample.compile` ask),
the prepared data it was trained on, and its MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genlab.config.experiment import Config
from genlab.core import checkpoint, paths
from genlab.core.errors import CheckpointError
from genlab.core.inference import check_precision
from genlab.core.runtime import deterministic, resolve_device, seed_everything, use_threads
from genlab.data import PreparedData, load_prepared
from genlab.evaluation import upstream
from genlab.evaluation.model_file import load_model, read_run_id
from genlab.models import Family
from genlab.pipeline.stage import stage_config
from genlab.training.loop import compile_networks


@dataclass(frozen=True)
class Trained:
    """What evaluate and sample start from: today's params, the trained model and its data."""

    cfg: Config
    device: torch.device
    family: Family
    saved: dict[str, Any]  # the model file: includes the params the model was trained with
    data: PreparedData
    paths: paths.ModelPaths
    upstream_md5: dict[str, str]  # the md5 of each upstream model file (genlab.evaluation.upstream)
    run_id: str  # the MLflow run that trained the model: evaluate and sample add to it


def load_trained(stage: str, name: str, family: str | None) -> Trained:
    cfg = stage_config(family)
    use_threads(cfg.threads)
    seed_everything(cfg.seed, f"{stage}_global")
    device = resolve_device(cfg.device)
    check_precision(cfg.sample.precision, device)
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
    md5s = upstream.attach(model, where, device, data.checksum, cfg, recorded=saved.get("upstream_md5", {}))
    prepare_networks(model, cfg.sample.precision, cfg.sample.compile)
    # Found before the stage computes or writes anything: a model without its run fails with nothing written.
    return Trained(cfg, device, model, saved, data, where, md5s, read_run_id(where))


def prepare_networks(family: Family, precision: str, compile: bool) -> None:
    """The networks of `family` and of the families it uses (MaskGIT's tokenizer), set up for making images:
    bf16 on CUDA puts 4-D (convolution) weights in channels-last, the layout cuDNN's bf16 tensor-core kernels
    work in, so activations stay in it (not on a CPU: there oneDNN's bf16 convolutions ran the U-Net 2.6x
    slower channels-last than contiguous, docs/benchmarks.md §17); `compile` wraps each network in
    torch.compile. fp32 without compile leaves them untouched, so the numbers are the ones of before.
    `check_precision` refuses bf16 on a device without bfloat16 arithmetic first."""
    check_precision(precision, family.device)
    families = [family] + [m for m in family.upstreams.values() if isinstance(m, Family)]
    if compile:
        deterministic(compiled=True)
    for fam in families:
        for module in fam.modules.values():
            if precision == "bf16" and family.device.type == "cuda":
                module.to(memory_format=torch.channels_last)
            if compile:
                compile_networks(module)
