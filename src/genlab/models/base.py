"""The contract every model family implements so that one training loop serves them all."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from genlab.config import Config


def weighted_means(batches: Iterable[tuple[dict[str, torch.Tensor], int]]) -> dict[str, float]:
    """Per-image means over batches of (per-batch mean metrics, batch size)."""
    batches = list(batches)
    total = sum(n for _, n in batches)
    return {k: (sum(m[k] * n for m, n in batches) / total).item() for k in batches[0][0]}


class Family(abc.ABC):
    """A trainable generative model plus its optimiser(s).

    All images crossing this interface are float tensors in [0, 1], shape (N, C, H, W).
    Metric tensors returned by the step methods are per-image means over the batch, detached.
    """

    name: str
    #: metric names reported by train_step, in display order (eval_step may report a subset)
    metric_names: tuple[str, ...]
    #: metrics drawn as train/val curves by the sample stage: name -> unit
    curves: dict[str, str]
    #: epochs between domain-FID checks of the samples during training (0 = never)
    fid_every: int = 0
    #: samples per check, scored against as many validation images
    fid_samples: int = 0

    def __init__(self, image_shape: tuple[int, int, int], device: torch.device):
        self.image_shape = image_shape
        self.device = device
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @property
    def dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @abc.abstractmethod
    def train_step(self, x: torch.Tensor, epoch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimisation step on batch x."""

    @abc.abstractmethod
    def eval_step(self, x: torch.Tensor, epoch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The same metrics as train_step on batch x, without updating anything."""

    @abc.abstractmethod
    def test_metrics(self, batches: Iterable[torch.Tensor], gen: torch.Generator, cfg: Config) -> dict[str, float]:
        """The family's headline numbers on the test split (batches of model inputs in [0, 1])."""

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

    def configure_sampling(self, sample_cfg: Any) -> None:
        """Adopt today's `sample.*` params (e.g. a sampler's step count); most families have none."""

    def data_convention(self, binarize: str) -> str | None:
        """How the family's test likelihoods read under the data convention, for the run's tags."""
        return None

    @abc.abstractmethod
    def snapshot(self, fixed_batch: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Named image batches to log each epoch, from a fixed batch and a freshly seeded generator."""

    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        if with_optimizers:
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
