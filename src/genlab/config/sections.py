"""The params sections every experiment has besides its data and model: training, the domain classifier and
the perceptual network, evaluation and sampling. Each key declares its type, default, range and the stages that
read it (`genlab.core.schema.key`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from genlab.core.errors import ConfigError
from genlab.core.schema import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_WIDTH,
    SAMPLING,
    between,
    key,
    optional,
    positive,
    positive_list,
)


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop's settings; each family's optimiser settings (lr, betas) are in its own section."""

    STAGES: ClassVar = ("train",)
    epochs: Optional[int] = key(
        None, optional(between(1, MAX_EPOCHS)), doc="null = the family's default: 100, FlowMo 65 (60 of 1A + 5 of 1B)"
    )
    batch_size: int = key(64, between(1, MAX_BATCH))
    lr_schedule: Literal["constant", "cosine"] = key(
        "cosine", doc="every optimiser's lr; cosine decays it to 0 per step over the epochs it trains in"
    )
    grad_clip: Optional[float] = key(None, doc="clip each optimiser's gradient norm to this (null = off)")
    precision: Literal["fp32", "bf16", "fp16"] = key(
        "fp32",
        doc="bf16/fp16: autocast of forward passes (weights, optimiser and backward stay float32); "
        "fp16 needs CUDA (loss scaling)",
    )
    compile: bool = key(False, doc="torch.compile the family's networks (first steps slower: compilation)")
    processes: int = key(1, between(1, 256), doc="data-parallel workers (torchrun); batch_size is the global batch")
    resume: bool = key(False, doc="continue from checkpoints/train.pt into the same MLflow run")

    def check(self, prefix: str) -> None:
        if self.batch_size % self.processes:
            raise ConfigError(
                f"params key '{prefix}batch_size' = {self.batch_size} does not divide among "
                f"{prefix}processes = {self.processes} workers: use a multiple of {self.processes} "
                "(batch_size is the global batch, split evenly across workers)"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(
                f"params key '{prefix}grad_clip' = {self.grad_clip!r} is out of range: expected a number > 0 or null"
            )


@dataclass(frozen=True)
class ClassifierConfig:
    """The domain classifier whose features and class probabilities score generated samples."""

    STAGES: ClassVar = ("classifier",)
    epochs: int = key(10, between(1, MAX_EPOCHS))
    batch_size: int = key(64, between(1, MAX_BATCH))
    lr: float = key(2e-3, positive(), doc="Adam, cosine-decayed to 0 over the run")
    channels: list[int] = key([32, 64], positive_list(MAX_WIDTH), doc="conv widths")
    features: int = key(128, between(2, MAX_WIDTH), doc="penultimate width: the feature space of FID, precision/recall")


@dataclass(frozen=True)
class PerceptualConfig(ClassifierConfig):
    """A second, smaller classifier whose feature maps and logits give a perceptual loss (FlowMo trains
    with it): never the domain classifier, which judges the results, since a loss and its judge must differ."""

    STAGES: ClassVar = ("perceptual",)
    epochs: int = key(10, between(1, MAX_EPOCHS))
    channels: list[int] = key(
        [16, 32], positive_list(MAX_WIDTH), doc="conv widths; its feature maps enter the distance"
    )
    features: int = key(64, between(2, MAX_WIDTH))


@dataclass(frozen=True)
class EvaluateConfig:
    STAGES: ClassVar = ("evaluate",)
    batch_size: int = key(256, between(1, MAX_BATCH))
    num_samples: int = key(2000, between(10, MAX_IMAGES), doc="generated images scored against as many test images")
    bootstrap: int = key(
        50,
        (lambda v: v == 0 or 2 <= v <= 10_000, "an integer in [2, 10000], or 0 for no spreads"),
        doc="resamples behind every *_std",
    )
    inception_fid: bool = key(False, doc="also the standard Inception-v3 FID and KID (slow on CPU)")
    inception_weights: Optional[str] = key(None, doc="local pt_inception-2015-12-05 weights file")


@dataclass(frozen=True)
class SampleConfig:
    STAGES: ClassVar = ("sample",)
    n: int = key(64, between(1, 1024), doc="images in samples/samples.png")
    interpolation_steps: int = key(10, between(2, 100))
    interpolation_pairs: int = key(8, between(1, 64))
    latent_map: Literal["pca", "tsne"] = key("pca", doc="families with an encoder")
    class_samples: int = key(1000, between(1, MAX_IMAGES), doc="generated images classified for class_histogram.png")
    precision: Literal["fp32", "bf16"] = key(
        "fp32",
        stages=SAMPLING,
        doc="bf16: autocast (on CUDA with channels-last conv weights) while evaluate and sample make images; "
        "needs CUDA or a CPU with AVX512-BF16 or AMX; moves the metrics a little (docs/benchmarks.md §13, §17)",
    )
    compile: bool = key(
        False, stages=SAMPLING, doc="torch.compile the networks evaluate and sample run (compilation first: ~1 min)"
    )
