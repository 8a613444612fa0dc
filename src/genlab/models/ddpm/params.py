"""The DDPM's params section (`ddpm:` in params.yaml).

Plain data, no torch: validating params.yaml loads no network code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.core.errors import ConfigError
from genlab.core.schema import (
    MAX_STEPS,
    SAMPLING,
    FamilyConfig,
    at_least,
    between,
    in_unit,
    key,
    positive,
    positive_list,
)


@dataclass(frozen=True)
class DDPMConfig(FamilyConfig):
    schedule: Literal["linear", "cosine"] = key(
        "linear", doc="linear: beta 1e-4 -> 0.02 (Ho et al.); cosine: Nichol & Dhariwal"
    )
    timesteps: int = key(1000, between(2, MAX_STEPS))
    prediction: Literal["eps", "v"] = key("eps")
    channels: int = key(32, between(1, 1024), doc="U-Net base width")
    channel_mults: list[int] = key([1, 2], positive_list(16), doc="width multiplier per resolution")
    res_blocks: int = key(1, between(1, 16), doc="residual blocks per resolution")
    attention: bool = key(True, doc="self-attention at the lowest resolution")
    ema_decay: float = key(0.999, in_unit(closed_low=True), doc="EMA weights used for evaluation and sampling")
    lr: float = key(1e-3, positive(), doc="Adam")
    snapshot_steps: int = key(10, between(1, MAX_STEPS), doc="DDIM steps for the per-epoch sample grid")
    sampler_steps: int = key(
        50, between(1, MAX_STEPS), stages=SAMPLING, doc="sampler steps (= timesteps with eta 1: ancestral DDPM)"
    )
    eta: float = key(0.0, at_least(0.0), stages=SAMPLING, doc="DDIM noise (0 = deterministic, 1 = DDPM variance)")
    bound_strata: int = key(
        100, between(0, MAX_STEPS), stages=("evaluate",), doc="timesteps per test image for the bound (0 = all)"
    )
    steps_grid: list[int] = key(
        [10, 50, 1000], positive_list(MAX_STEPS), stages=("sample",), doc="quality-vs-steps grid"
    )

    def check(self, prefix: str) -> None:
        for name in ("snapshot_steps", "sampler_steps"):
            if getattr(self, name) > self.timesteps:
                raise ConfigError(
                    f"{prefix}{name} = {getattr(self, name)} exceeds {prefix}timesteps = {self.timesteps}: "
                    f"a sampler cannot take more steps than the chain has (choose at most {self.timesteps})"
                )
        too_many = [k for k in self.steps_grid if k > self.timesteps]
        if too_many:
            raise ConfigError(
                f"{prefix}steps_grid = {self.steps_grid} holds {too_many}, more than {prefix}timesteps = "
                f"{self.timesteps}: use step counts of at most {self.timesteps}"
            )
