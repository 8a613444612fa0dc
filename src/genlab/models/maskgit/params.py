"""MaskGIT's params section (`maskgit:` in params.yaml).

Plain data, no torch: validating params.yaml loads no network code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from genlab.core.errors import ConfigError
from genlab.core.schema import (
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_WIDTH,
    SAMPLING,
    FamilyConfig,
    Upstream,
    at_least,
    between,
    in_unit,
    key,
    positive,
)

CHOICE_TEMPERATURE = 4.5  # genlab.processes.masked_tokens: Gumbel scale of the confidence ranking at step 0


@dataclass(frozen=True)
class MaskGITConfig(FamilyConfig):
    UPSTREAM: ClassVar = (Upstream("tokenizer"), Upstream("classifier", stage="classifier"))
    TOKENS_OF: ClassVar = "tokenizer"  # the codes it models, and decodes with that tokenizer
    SCORED_BY: ClassVar = "classifier"  # sample FID checks during training

    tokenizer: str = key("models/tokenizer.pt", doc="the trained tokenizer (a genlab model file) it models")
    width: int = key(128, between(8, MAX_WIDTH))
    depth: int = key(4, between(1, 64))
    heads: int = key(4, between(1, 64))
    dropout: float = key(0.1, in_unit(closed_low=True))
    class_conditional: bool = key(True, doc="condition on the class label (classifier-free guidance when sampling)")
    label_drop: float = key(0.1, in_unit(closed_low=True), doc="share of labels replaced by the null class in training")
    lr: float = key(5e-4, positive(), doc="Adam")
    beta1: float = key(0.9, in_unit(closed_low=True))
    beta2: float = key(0.96, in_unit(closed_low=True))
    ema_decay: float = key(0.999, in_unit(closed_low=True), doc="EMA of the weights, used to evaluate and sample")
    snapshot_steps: int = key(8, between(1, 1000), doc="decoding steps of the per-epoch sample grid")
    eval_every: int = key(
        0, between(0, MAX_EPOCHS), doc="epochs between sample FID checks (0 = never; the last epoch always)"
    )
    fid_samples: int = key(200, between(10, MAX_IMAGES))
    decode_steps: int = key(12, between(1, 1000), stages=SAMPLING, doc="T: parallel decoding steps")
    temperature: float = key(1.0, at_least(0.0), stages=SAMPLING, doc="token sampling temperature (0 = argmax)")
    choice_temperature: float = key(CHOICE_TEMPERATURE, at_least(0.0), stages=SAMPLING, doc="confidence noise")
    guidance: float = key(0.0, at_least(0.0), stages=SAMPLING, doc="classifier-free guidance w (0 = none)")
    nll_orders: int = key(
        1, between(1, 1000), stages=("evaluate",), doc="random orders averaged in the likelihood bound"
    )

    def check(self, prefix: str) -> None:
        if self.width % self.heads:
            raise ConfigError(f"{prefix}width = {self.width} is not divisible by {prefix}heads = {self.heads}")
