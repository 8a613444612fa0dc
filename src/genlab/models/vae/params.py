"""The VAE's params section (`vae:` in params.yaml).

Plain data, no torch: validating params.yaml loads no network code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.core.schema import MAX_EPOCHS, MAX_WIDTH, FamilyConfig, at_least, between, key, positive, positive_list


@dataclass(frozen=True)
class VAEConfig(FamilyConfig):
    arch: Literal["mlp", "conv"] = key("mlp", doc="mlp (seed 000: 784-512-256-z) | conv")
    hidden: list[int] = key(
        [512, 256], positive_list(MAX_WIDTH), doc="mlp widths, encoder order (the decoder mirrors them)"
    )
    channels: list[int] = key([32, 64], positive_list(MAX_WIDTH), doc="conv widths, encoder order")
    latent_dim: int = key(20, between(1, MAX_WIDTH))
    likelihood: Literal["bernoulli", "gaussian"] = key(
        "gaussian", doc="gaussian: discretised on the data's grid (a true likelihood); bernoulli: seed 000's BCE"
    )
    beta: float = key(1.0, at_least(0.0), doc="weight of the KL term (1 = the true ELBO)")
    kl_warmup_epochs: int = key(
        0, between(0, MAX_EPOCHS), doc="KL weight ramps linearly from 1/n to beta over n epochs"
    )
    lr: float = key(1e-3, positive(), doc="Adam")
    iw_samples: int = key(
        1000,
        between(1, 10_000),
        stages=("evaluate",),
        doc="importance samples per test image for the IW-NLL (5000 = literature)",
    )
