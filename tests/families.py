"""The tiny config of every registered family, in one place, and helpers to build and step them.

A family registered in genlab.models.FAMILIES without a row here fails tests/test_family_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from genlab.config.experiment import stage_view
from genlab.config.sections import TrainConfig
from genlab.core.runtime import seed_everything
from genlab.core.schema import build
from genlab.models import FAMILIES, DataSpec, Family
from genlab.models.classifier import DomainClassifier
from genlab.training.loop import NullTracker, Optimisation, fit, resume_key
from genlab.training.sources import image_source, input_levels

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
    "maskgit": {"width": 16, "depth": 1, "heads": 2, "snapshot_steps": 2, "decode_steps": 3, "fid_samples": 20},
    "flowmo": {
        "encoder_width": 16,
        "encoder_heads": 2,
        "encoder_depth": 1,
        "decoder_width": 16,
        "decoder_heads": 2,
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
    """Stand-ins for the family's upstream networks: small untrained CNNs of its image shape (classifier,
    perceptual) and a tiny untrained FlowMo (tokenizer)."""
    for needed in family.upstream:
        if needed.name == family.config_class.TOKENS_OF:
            tokenizer = make_family("flowmo", family.image_shape, family.levels)
            with torch.no_grad():  # a fresh FlowMo's zero gates ignore the code: perturb the weights it decodes with
                for param in tokenizer.ema.parameters():
                    param.add_(0.05 * torch.randn_like(param))
            tokenizer.train(False)
            family.attach(needed.name, tokenizer)
        else:
            family.attach(needed.name, DomainClassifier(family.image_shape, 10, [4, 8], 8, 16).train(False))
    return family


def batch(family: Family, n: int, seed: int = 0) -> torch.Tensor:
    """A training batch of what the family reads: images in [0, 1], or token ids with the label last."""
    gen = torch.Generator().manual_seed(seed)
    if family.config_class.TOKENS_OF:
        tokenizer = family.upstreams[family.config_class.TOKENS_OF]
        tokens = torch.randint(0, tokenizer.vocabulary, (n, tokenizer.sequence_length), generator=gen)
        return torch.cat([tokens, torch.randint(0, 10, (n, 1), generator=gen)], dim=1)
    return torch.rand(n, *family.image_shape, generator=gen)


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


def train_run_optimisers(cfg, data) -> list[torch.optim.Adam]:
    """train_run, returning the Adam optimisers the loop built, in the family's order, as the run left them."""
    seen = []
    real_adam = torch.optim.Adam

    def adam(*args, **kwargs):
        seen.append(real_adam(*args, **kwargs))
        return seen[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim, "Adam", adam)
        train_run(cfg, data)
    return seen
