"""FlowMo's params section (`flowmo:` in params.yaml).

Plain data, no torch: validating params.yaml loads no network code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from genlab.core.errors import ConfigError
from genlab.core.schema import (
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_STEPS,
    MAX_WIDTH,
    SAMPLING,
    FamilyConfig,
    Upstream,
    at_least,
    between,
    in_unit,
    key,
    optional,
    positive,
)

ENTROPY_WEIGHT, COMMITMENT_WEIGHT = (
    0.0025,
    0.000625,
)  # FlowMo's LFQ loss weights (base.yaml); genlab.models.flowmo.lfq's
# genlab.processes.rectified_flow's defaults, repeated here as processes sit below models and these must not
# import torch (tests/test_family_contract checks they agree)
UNIFORM_SHARE, POSTTRAIN_STEPS = 0.1, 8
STEPS, RHO, GUIDANCE = 25, 4.0, 1.5  # FlowMo's evaluation sampler (base.yaml: 25 steps, "pow_0.25", cfg 1.5)


@dataclass(frozen=True)
class FlowMoConfig(FamilyConfig):
    UPSTREAM: ClassVar = (Upstream("classifier", stage="classifier"), Upstream("perceptual", stage="perceptual"))
    SCORED_BY: ClassVar = "classifier"  # val rFID checks; the perceptual network serves the perceptual loss
    EPOCHS: ClassVar = 65  # 60 of 1A + 5 of 1B: a digits run in ~4 min on 2 cores (docs/benchmarks.md §16)

    decoder: Literal["flow", "regression"] = key("flow", doc="flow (FlowMo) | regression (the one-pass baselines)")
    patch: int = key(2, between(1, 64), doc="patch size; must divide the image size")
    tokens: int = key(4, between(1, 1024), doc="latent tokens per image")
    bits: int = key(6, between(1, 64), doc="bits per token: bits per pixel = tokens * bits / (H * W)")
    group: int = key(3, between(1, 16), doc="bits per LFQ entropy group (2^group codes; divides bits); a token id")
    encoder_width: int = key(64, between(8, MAX_WIDTH), doc="encoder transformer width")
    encoder_depth: int = key(2, between(1, 64), doc="encoder blocks")
    encoder_heads: int = key(4, between(1, 64), doc="encoder attention heads; width / heads must be even and >= 4")
    decoder_width: int = key(64, between(8, MAX_WIDTH), doc="decoder transformer width")
    decoder_depth: int = key(3, between(1, 64), doc="decoder blocks")
    decoder_heads: int = key(4, between(1, 64), doc="decoder attention heads; width / heads must be even and >= 4")
    lr: float = key(2e-3, positive(), doc="Adam, stage 1A (2e-3: docs/benchmarks.md §16)")
    beta1: float = key(0.9, in_unit(closed_low=True))
    beta2: float = key(0.95, in_unit(closed_low=True))
    ema_decay: float = key(0.999, in_unit(closed_low=True), doc="EMA of the weights, used to evaluate and sample")
    entropy_weight: float = key(ENTROPY_WEIGHT, at_least(0.0))
    commitment_weight: float = key(COMMITMENT_WEIGHT, at_least(0.0))
    perceptual_weight: float = key(0.1, at_least(0.0), doc="1A: perceptual distance of x̂ (LPIPS-like)")
    adversarial_weight: float = key(0.0, at_least(0.0), doc="regression decoder only: hinge GAN loss (baseline B2)")
    code_drop: float = key(0.1, in_unit(closed_low=True), doc="share of codes dropped in training (for guidance)")
    uniform_share: float = key(UNIFORM_SHARE, in_unit(closed_low=True), doc="share of t ~ U(0, 1), else logit-normal")
    pretrain_epochs: int = key(
        60, between(1, MAX_EPOCHS), doc="stage 1A; the epochs after it (to train.epochs) are stage 1B"
    )
    freeze_encoder_after: Optional[int] = key(
        None, optional(between(0, MAX_EPOCHS)), doc="1A epochs before the encoder freezes"
    )
    posttrain_lr: float = key(
        2.5e-4,
        positive(),
        doc="Adam, stage 1B (FlowMo's paper: half its 1A lr); train.lr_schedule runs over the 1B epochs",
    )
    sample_weight: float = key(0.01, at_least(0.0), doc="1B: lambda_sample, weight of the sampled image's distance")
    posttrain_steps: int = key(POSTTRAIN_STEPS, between(1, 100), doc="1B: k, Euler steps differentiated through")
    checkpoint_chain: bool = key(
        False, doc="1B: recompute each step's activations in backward (less memory, ~1/3 more compute; same numbers)"
    )
    snapshot_steps: int = key(
        8, between(1, 1000), doc="sampler steps of in-training reconstructions (grids, val PSNR, rFID)"
    )
    eval_every: int = key(
        10,
        between(0, MAX_EPOCHS),
        doc="epochs between val rFID (and val PSNR) checks in 1A (0 = never; else every 1B epoch and the last too)",
    )
    fid_samples: int = key(500, between(10, MAX_IMAGES), doc="validation images reconstructed for each check")
    sampler_steps: int = key(STEPS, between(1, MAX_STEPS), stages=SAMPLING, doc="Euler steps of reconstructions")
    rho: float = key(RHO, positive(), stages=SAMPLING, doc="time grid t_i = (i/n)^rho (1 = uniform)")
    guidance: float = key(GUIDANCE, at_least(0.0), stages=SAMPLING, doc="classifier-free guidance w (1 = none)")
    guidance_sigma: Optional[list[float]] = key(
        [0.17, 1.02],
        stages=SAMPLING,
        doc="noise levels sigma (lo, hi) where guidance applies, t = sigma/(1+sigma); null = all",
    )

    def check(self, prefix: str) -> None:
        if self.bits % self.group:
            raise ConfigError(f"{prefix}group = {self.group} must divide {prefix}bits = {self.bits}")
        if self.group > 16:
            raise ConfigError(
                f"{prefix}group = {self.group} is too large: the entropy loss scores 2^group codes; use <= 16"
            )
        for net in ("encoder", "decoder"):
            width, heads = getattr(self, f"{net}_width"), getattr(self, f"{net}_heads")
            if width % heads or (width // heads) % 2 or width // heads < 4:
                raise ConfigError(
                    f"{prefix}{net}_width = {width} over {prefix}{net}_heads = {heads}: "
                    "expected an even head width >= 4"
                )
        if self.guidance_sigma is not None and not (
            len(self.guidance_sigma) == 2 and 0 <= self.guidance_sigma[0] < self.guidance_sigma[1]
        ):
            raise ConfigError(
                f"{prefix}guidance_sigma = {self.guidance_sigma} must be [lo, hi] with 0 <= lo < hi, or null"
            )
