"""The contract every model family implements so that one training loop and the stages serve them all.

A family builds its networks and says what to minimise; the loop (genlab.training.loop) owns the optimisers,
their steps, gradient clipping, the learning-rate schedule and EMA updates. Optional abilities are
declared by inheriting a capability class below (Generative, Encoder, Reconstructor, Tokenizer,
ExtraFigures), never probed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from genlab.core.schema import FamilyConfig, Upstream
from genlab.models.ema import EMA

Update = Callable[[str, torch.Tensor], None]  # update(optimiser name, loss): backward + step, done by the loop


class Sums:
    """Running per-example sums of per-batch mean metrics (batch mean x batch size), added in batch order:
    float32, or float64 on the CPU (what workers all-reduce). Running sums, not a list of the batches'
    metrics: an epoch's worth of small tensors kept alive pinned fragments of glibc's heap, which grew
    ~1 MB per step for 12k-pixel images."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype, self.totals, self.count = dtype, {}, 0

    def add(self, metrics: dict[str, torch.Tensor], n: int) -> None:
        for k, v in metrics.items():
            v = v.detach().double().cpu() if self.dtype == torch.float64 else v.float()
            self.totals[k] = self.totals.get(k, 0) + v * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: (total / self.count).item() for k, total in self.totals.items()}


def weighted_means(batches: Iterable[tuple[dict[str, torch.Tensor], int]]) -> dict[str, float]:
    """Per-image means over batches of (per-batch mean metrics, batch size)."""
    sums = Sums()
    for metrics, n in batches:
        sums.add(metrics, n)
    return sums.means()


@dataclass(frozen=True)
class DataSpec:
    """What a family knows of its data: image shape (C, H, W) and how many values a pixel takes."""

    image_shape: tuple[int, int, int]
    levels: int


@dataclass(frozen=True)
class OptimizerSpec:
    """One Adam optimiser the loop builds for the family: its parameters (or param groups) and settings."""

    params: list
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)


class Family(abc.ABC):
    """A trainable generative model. Register it with its `config_class` (its params section) in genlab.models.REGISTRY.

    All images crossing this interface are float tensors in [0, 1], shape (N, C, H, W). Metric tensors
    returned by the step methods are per-image means over the batch, detached. Everything random takes
    the caller's generator, so a checkpoint captures it and a resumed run continues bit for bit.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[FamilyConfig]]
    #: metric names reported by train_step, in display order (eval_step may report a subset)
    metric_names: tuple[str, ...]
    #: metrics eval_step adds that training does not compute (e.g. the PSNR of sampled reconstructions)
    eval_only_metrics: tuple[str, ...] = ()
    #: metrics drawn as train/val curves (curves.png, DVC plots): name -> unit
    curves: ClassVar[dict[str, str]]
    #: trained models this family uses besides its own weights (see genlab.evaluation.upstream), attached by the stages:
    #: declared by its params section (`FamilyConfig.UPSTREAM`), which the pipeline reads without torch
    upstream: ClassVar[tuple[Upstream, ...]] = ()
    #: train in channels-last memory format, the layout oneDNN and cuDNN convolve fastest in, where it measured
    #: faster (docs/benchmarks.md §15: the DCGAN 1.22x on MNIST; the DDPM's U-Net 0.98x, so not there)
    channels_last: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.upstream = cls.config_class.UPSTREAM

    def __init__(self, cfg: FamilyConfig, data: DataSpec, device: torch.device):
        self.cfg = cfg
        self.image_shape = data.image_shape
        self.levels = data.levels
        self.device = device
        #: every network whose weights make up the model (saved, loaded, put in train/eval mode)
        self.modules: dict[str, nn.Module] = {}
        #: optimiser name -> (EMA, its source network): the loop updates the EMA after that optimiser steps
        self.ema_of: dict[str, tuple[EMA, nn.Module]] = {}
        #: the upstream models, once attached
        self.upstreams: dict[str, Any] = {}
        # Scores during training, declared by the section (`SCORED_BY`): epochs between checks (0 = never) and
        # samples per check, scored against as many validation images.
        scored = cfg.SCORED_BY is not None
        self.fid_every: int = cfg.eval_every if scored else 0
        self.fid_samples: int = cfg.fid_samples if scored else 0

    @property
    def dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    # --- training -----------------------------------------------------------------------------
    @abc.abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """The optimisers the loop builds, by name (the names `losses` and `update` use)."""

    def losses(
        self, x: torch.Tensor, epoch: int, gen: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss per optimiser, metrics) for batch x. Each loss must own its graph (one backward each)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither losses() nor train_step()")

    def train_step(self, x: torch.Tensor, epoch: int, gen: torch.Generator, update: Update) -> dict[str, torch.Tensor]:
        """One training step on batch x; returns its metrics. The one hook for manual control.

        By default the losses of `losses` are handed to `update(optimiser, loss)` in order; the loop's
        update backpropagates, clips, steps and updates EMAs. Override to decide which optimisers step
        and when (the GAN's critic steps, a phase that freezes an encoder): call `update` for each.
        """
        losses, metrics = self.losses(x, epoch, gen)
        for name, loss in losses.items():
            update(name, loss)
        return metrics

    def after_step(self, optimiser: str) -> None:
        """Called by the loop right after optimiser `optimiser` stepped, before its EMA update: for
        constraints on the weights (FlowMo keeps each Linear at its initial norm). Default: nothing."""
        return

    def schedule_window(self, optimiser: str, epochs: int) -> tuple[int, int]:
        """(first, last) epoch, 1-based, over which `train.lr_schedule` runs for `optimiser`: the epochs it
        steps in. Default: the whole run; a family that trains in stages gives each stage's optimiser its own."""
        return 1, epochs

    def selection(self) -> tuple[str, int] | None:
        """(history column, first epoch): keep the weights of the epoch with the lowest value of that
        validation column from that epoch on, instead of the last epoch's. Default: the last epoch."""
        return None

    @abc.abstractmethod
    def eval_step(self, x: torch.Tensor, epoch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The same metrics as train_step (or a subset, plus `eval_only_metrics`) on batch x, updating nothing."""

    @abc.abstractmethod
    def test_metrics(self, batches: Iterable[torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        """The family's headline numbers on the test split (batches of model inputs in [0, 1])."""

    @abc.abstractmethod
    def snapshot(self, fixed_batch: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Named image batches to log each epoch, from a fixed batch and a freshly seeded generator."""

    def attach(self, name: str, model: Any) -> None:
        """Receive upstream model `name` (loaded and checked by the stage) before training or use."""
        self.upstreams[name] = model

    def data_convention(self, binarize: str) -> str | None:
        """How the family's test likelihoods read under the data convention, for the run's tags."""
        return None

    # --- state ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {"modules": {k: m.state_dict() for k, m in self.modules.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])


# --- capabilities: inherit one to declare it; the stages check isinstance, never hasattr -----------


class Generative(abc.ABC):
    """Generates new images (samples, latent walks, sample FID, class histogram)."""

    #: whether latent codes can be interpolated (continuous codes) for the latent-walk figures
    walkable: ClassVar[bool] = True

    @abc.abstractmethod
    def prior(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n latent codes drawn from the model's prior (what `generate` turns into images)."""

    @abc.abstractmethod
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from latent codes, deterministically (interpolations walk through z)."""

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n new images in [0, 1]."""
        return self.generate(self.prior(n, gen))


class Encoder(abc.ABC):
    """Maps images to continuous latents (latent walks between real images, latent maps)."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent means (N, D) of images x in [0, 1]: codes `generate` accepts."""


class Reconstructor(abc.ABC):
    """Reconstructs its input (rFID, PSNR/SSIM, class accuracy in evaluate; reconstruction grids in sample)."""

    @abc.abstractmethod
    def reconstruct(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Reconstructions in [0, 1] of images x in [0, 1]; a stochastic decoder draws from `gen`."""

    def quick_reconstruct(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The reconstruction of in-training checks (val PSNR, val rFID): it may use a cheaper sampler,
        and reads only training keys, so the train stage's DVC view covers it. Default: `reconstruct`."""
        return self.reconstruct(x, gen)

    def reconstruction_distances(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
        """Family-specific distances between reconstructions and originals, for evaluate (default none)."""
        return {}

    @torch.no_grad()
    def paired_reconstructions(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Each image followed by its reconstruction, for side-by-side grids."""
        return torch.stack([x, self.reconstruct(x, gen)], dim=1).flatten(0, 1)


class Tokenizer(abc.ABC):
    """Maps images to discrete tokens and back (bits per pixel, token usage; the data of a token prior)."""

    #: tokens per image and the number of values a token takes
    sequence_length: int
    vocabulary: int

    @abc.abstractmethod
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (N, sequence_length), int64 in [0, vocabulary), of images x in [0, 1]."""

    @abc.abstractmethod
    def detokenize(self, tokens: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images in [0, 1] decoded from token ids; a stochastic decoder draws from `gen`."""


class ExtraFigures(abc.ABC):
    """Draws figures of its own in the sample stage (e.g. a sampler's trajectory)."""

    @abc.abstractmethod
    def figures(self, out_dir: Path, seed: int, images: torch.Tensor) -> list[Path]:
        """Write the family's own figures into out_dir (random draws from streams of `seed`; `images`: test
        images in [0, 1] for figures that start from real data); their paths."""
