"""What the quality benchmarks share: prepared data from the local mirror and a cached domain classifier."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from genlab.config.experiment import Config, stage_view
from genlab.core.errors import CheckpointError
from genlab.core.runtime import seed_everything, stream
from genlab.data import PreparedData, load_prepared, prepare
from genlab.evaluation.classifier import (
    build_classifier,
    load_classifier,
    num_classes,
    save_classifier,
    train_classifier,
)
from genlab.models import DataSpec, Family, build_family
from genlab.models.classifier import DomainClassifier
from genlab.training.loop import NullTracker, fit, resume_key
from genlab.training.sources import image_source, input_levels

OUT = Path(__file__).resolve().parent / "out"
# Seed 000's VAE (784-512-256-20 MLP, BCE on grey levels, Adam 1e-3), as the VAE benchmarks train it.
SEED_VAE = {
    "arch": "mlp",
    "hidden": [512, 256],
    "latent_dim": 20,
    "likelihood": "bernoulli",
    "beta": 1.0,
    "kl_warmup_epochs": 0,
    "lr": 1e-3,
}


def switches(setting: str) -> set[str]:
    """What a speed bench's setting turns on, from names joined by "+" ("bf16+cl+compile"): some of bf16,
    cl (channels-last; "channels_last" alone says the same), compile; "default", "fp32", "before": none."""
    return {"cl" if p == "channels_last" else p for p in setting.split("+")} - {"default", "fp32", "before"}


def prepared(cfg: Config) -> PreparedData:
    """cfg's dataset prepared once under bench/out/prepared_<name> (the split depends on seed and fractions)."""
    folder = OUT / f"prepared_{cfg.data.name}"
    prepare(cfg, folder)
    return load_prepared(folder)


def classifier_for(
    data: PreparedData, cfg: Config, device: torch.device, section: str = "classifier"
) -> DomainClassifier:
    """The domain classifier of `data` (cfg.classifier params), or with section="perceptual" the perceptual
    network (cfg.perceptual), trained once and cached in bench/out/."""
    path = OUT / f"{cfg.data.name}_{section}.pt"
    try:
        return load_classifier(path, device, data_md5=data.checksum)
    except CheckpointError:
        began = time.perf_counter()
        model, metrics = train_classifier(cfg, data, device, section)
        save_classifier(model, path, stage_view(cfg, section), data.checksum, metrics, section)
        print(
            f"{section}: test accuracy {metrics['test']['accuracy']:.4f} "
            f"({time.perf_counter() - began:.0f} s, cached in {path})"
        )
        return load_classifier(path, device, data_md5=data.checksum)


def build(cfg: Config, data: PreparedData, device: torch.device) -> Family:
    """cfg's family for `data`, initialised as the train stage does; its classifier or perceptual network, if it
    uses one, is an untrained one of the configured shape (what it costs, not what it scores)."""
    seed_everything(cfg.seed, "model_init")
    spec = DataSpec(data.image_shape, input_levels(data, cfg.data.binarize))
    family = build_family(cfg.model.family, cfg.family, spec, device)
    for needed in family.upstream:
        if needed.stage:  # a network the pipeline trains: its params section is the stage's
            net = build_classifier(getattr(cfg, needed.stage), data.image_shape, num_classes(data), data.max_value)
            family.attach(needed.name, net.to(device).eval())
    return family


def train(cfg: Config, data: PreparedData, family: Family) -> list[dict]:
    """What `dvc repro train` does, minus MLflow and checkpoints; returns the history."""
    key = resume_key(stage_view(cfg, "train"))
    return fit(
        family,
        image_source(data, cfg.data.binarize),
        cfg.train,
        cfg.seed,
        key=key,
        checkpoint_path=None,
        tracker=NullTracker(),
    )


def test_metrics(cfg: Config, data: PreparedData, family: Family, n: int | None = None, batch_size: int = 256) -> dict:
    """The family's test numbers on the first n test images, as stages/evaluate.py computes them."""
    family.train(False)
    source, gen = image_source(data, cfg.data.binarize), stream(cfg.seed, "test_noise", family.device)
    test = data.test.images[: n or len(data.test)]
    batches = (
        source.to_input(test[i : i + batch_size].to(family.device), gen) for i in range(0, len(test), batch_size)
    )
    return family.test_metrics(batches, gen)
