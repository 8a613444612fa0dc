"""The tiny config of every registered family, in one place, and helpers to build and step them.

A family registered in genlab.models.FAMILIES without a row here fails tests/test_family_contract.py.
"""

from __future__ import annotations

import torch

from genlab.config import TrainConfig, stage_view
from genlab.models import FAMILIES, DataSpec, Family
from genlab.quality.classifier import DomainClassifier
from genlab.runtime import seed_everything
from genlab.schema import build
from genlab.training import NullTracker, Optimisation, fit, image_source, input_levels, resume_key

CPU = torch.device("cpu")

# Small enough for a CPU test in a second; each family's section as params.yaml would hold it.
TINY_FAMILIES: dict[str, dict] = {
    "vae": {"hidden": [16, 8], "latent_dim": 3, "channels": [4, 8]},
    "gan": {"latent_dim": 8, "width": 8, "eval_every": 2, "fid_samples": 50},
    "ddpm": {
        "timesteps": 20,
        "channels": 8,
        "snapshot_steps": 4,
        "sampler_steps": 5,
        "steps_grid": [2, 5, 20],
        "bound_strata": 4,
    },
    "flowmo": {
        "width": 16,
        "heads": 2,
        "encoder_depth": 1,
        "decoder_depth": 1,
        "pretrain_epochs": 2,
        "posttrain_steps": 2,
        "snapshot_steps": 2,
        "sampler_steps": 3,
        "fid_samples": 50,
    },
}


def family_config(name: str, **overrides):
    """The validated section of family `name`: its tiny row with `overrides`."""
    return build(FAMILIES[name].config_class, {**TINY_FAMILIES[name], **overrides}, f"{name}.", require_all=False)


def make_family(name: str, shape=(1, 8, 8), levels: int = 17, seed: int = 0, **overrides) -> Family:
    """A tiny family; its upstream networks (classifier, perceptual) are small untrained CNNs of the shape."""
    torch.manual_seed(seed)
    return attach_stubs(FAMILIES[name](family_config(name, **overrides), DataSpec(tuple(shape), levels), CPU))


def attach_stubs(family: Family) -> Family:
    """Small untrained CNNs of the family's image shape as its upstream networks (classifier, perceptual)."""
    for upstream in family.upstream:
        family.attach(upstream, DomainClassifier(family.image_shape, 10, [4, 8], 8, 16).train(False))
    return family


class Stepper:
    """Trains a family outside the loop, through the loop's own optimisation (Adam, EMA, clipping)."""

    def __init__(self, family: Family, train: TrainConfig | None = None):
        self.family = family
        self.optimisation = Optimisation(family, train or TrainConfig())

    def __call__(self, x: torch.Tensor, gen: torch.Generator, epoch: int = 1) -> dict[str, torch.Tensor]:
        self.family.train(True)
        return self.family.train_step(x, epoch, gen, self.optimisation.update)


def build_from(cfg, data) -> Family:
    """The active family of a full Config, for `data` (a PreparedData), seeded like the train stage."""
    seed_everything(cfg.seed, "model_init")
    spec = DataSpec(data.image_shape, input_levels(data, cfg.data.binarize))
    return attach_stubs(FAMILIES[cfg.model.family](cfg.family, spec, CPU))


def train_run(cfg, data, ckpt=None, state=None, tracker=None, scorer=None, family=None) -> list[dict]:
    """fit() as the train stage calls it, for a full Config; returns the history."""
    family = family or build_from(cfg, data)
    return fit(
        family,
        image_source(data, cfg.data.binarize),
        cfg.train,
        cfg.seed,
        key=resume_key(stage_view(cfg, "train")),
        checkpoint_path=ckpt,
        tracker=tracker or NullTracker(),
        resume_state=state,
        scorer=scorer,
    )
