"""The GAN game's losses (seed 001) on raw discriminator outputs, and the WGAN-GP gradient penalty.

`real` and `fake` are D's outputs (logits for bce/minimax, critic values otherwise) on a batch of real
and generated images; every loss is a mean over the batch. D minimises `discriminator_loss`, G minimises
`generator_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind in ("bce", "minimax"):
        # -log D(x) - log(1 - D(G(z))) with D = sigmoid(logit); softplus keeps it finite for any logit.
        return (F.softplus(-real) + F.softplus(fake)).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()  # the penalty is added by the caller
    if kind == "lsgan":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.softplus(-fake).mean()  # non-saturating: -log D(G(z))
    if kind == "minimax":
        return -F.softplus(fake).mean()  # log(1 - D(G(z))): saturates when D wins, kept for comparison
    if kind == "lsgan":
        return 0.5 * ((fake - 1) ** 2).mean()
    if kind in ("wgan-gp", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def mean_output(kind: str, out: torch.Tensor) -> torch.Tensor:
    """Mean D output as reported: a probability for the logistic losses, the raw critic value otherwise."""
    return torch.sigmoid(out).mean() if kind in ("bce", "minimax") else out.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """E[(||∇D(x̂)||₂ - 1)²] at x̂ = αx + (1-α)x̃, α ~ U(0,1) per image (Gulrajani et al. 2017)."""
    alpha = torch.rand((len(real),) + (1,) * (real.dim() - 1), generator=gen, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
