"""Latent walks (straight and spherical) and 2-D maps of latent codes, for the sample stage's figures."""

from __future__ import annotations

import numpy as np
import torch

from genlab.models.base import Encoder, Generative


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight-line interpolation between rows of a and b (N, D) at fractions t (S,) -> (N, S, D)."""
    return (1 - t.view(1, -1, 1)) * a.unsqueeze(1) + t.view(1, -1, 1) * b.unsqueeze(1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (N, D) at fractions t (S,) -> (N, S, D).

    Between two Gaussian draws it keeps the norm typical of the prior, where a straight line passes
    through the low-norm centre the model rarely saw (White 2016). Parallel rows fall back to a line.
    """
    line = lerp(a, b, t)
    a, b, t = a.unsqueeze(1), b.unsqueeze(1), t.view(1, -1, 1)
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    straight = sin.abs() < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    curved = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(straight, line, curved)


def interpolate(
    family: Generative, z_a: torch.Tensor, z_b: torch.Tensor, steps: int, how: str = "linear"
) -> torch.Tensor:
    """Rows of generated images along the path from z_a[i] to z_b[i]: 'linear' or 'slerp'."""
    shape = z_a.shape[1:]
    a, b = z_a.flatten(1), z_b.flatten(1)
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype)
    z = (slerp if how == "slerp" else lerp)(a, b, t)
    return family.generate(z.flatten(0, 1).view(-1, *shape))


def latent_map(family: Encoder, x: torch.Tensor, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the latent means of x, and how they were obtained (`seed`: the projection's)."""
    mu = family.encode(x).cpu().double().numpy()
    if mu.shape[1] <= 2:
        return (mu if mu.shape[1] == 2 else np.hstack([mu, np.zeros_like(mu)])), "latent means"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(mu) - 1) / 3)
        return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(mu), "t-SNE of latent means"
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=seed).fit(mu)
    explained = pca.explained_variance_ratio_.sum()
    return pca.transform(mu), f"PCA of latent means ({explained:.0%} of variance)"
