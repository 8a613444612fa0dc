"""The GAN's params section (`gan:` in params.yaml).

Plain data, no torch: validating params.yaml loads no network code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from genlab.core.schema import (
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_WIDTH,
    FamilyConfig,
    Upstream,
    at_least,
    between,
    in_unit,
    key,
    optional,
    positive,
)

LOSSES = ("bce", "minimax", "wgan-gp", "lsgan", "hinge")  # gan.loss: genlab.models.gan.losses has each


@dataclass(frozen=True)
class GANConfig(FamilyConfig):
    """DCGAN (seed 001) with its own optimiser settings."""

    UPSTREAM: ClassVar = (Upstream("classifier", stage="classifier"),)
    SCORED_BY: ClassVar = "classifier"  # domain-FID checks during training

    loss: Literal[LOSSES] = key("bce", doc="bce = non-saturating G loss; minimax = the original log(1 - D(G(z)))")
    latent_dim: int = key(100, between(1, MAX_WIDTH))
    width: int = key(64, between(1, 1024), doc="channels of D's first conv layer and G's last, doubled per halving")
    n_critic: Optional[int] = key(
        None, optional(between(1, 100)), doc="D steps per G step; null = 5 for wgan-gp, else 1"
    )
    gp_weight: float = key(10.0, at_least(0.0), doc="wgan-gp: lambda of the gradient penalty")
    spectral_norm: bool = key(False, doc="spectral normalisation on D's layers (then D has no BatchNorm)")
    lr: float = key(2e-4, positive(), doc="Adam, both networks, as in DCGAN")
    beta1: float = key(0.5, in_unit(closed_low=True))
    beta2: float = key(0.999, in_unit(closed_low=True))
    ema_decay: float = key(0.999, in_unit(closed_low=True), doc="EMA copy of G, used for every sample")
    eval_every: int = key(
        5, between(0, MAX_EPOCHS), doc="epochs between domain-FID checks in training (0 = never; the last always)"
    )
    fid_samples: int = key(1000, between(10, MAX_IMAGES), doc="samples per check, against as many validation images")
