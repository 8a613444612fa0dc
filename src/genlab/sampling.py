"""Figures the sample stage draws from a trained model (latent ones need a family with an encoder)."""

from __future__ import annotations

import numpy as np
import torch

from genlab.models import Family


def interpolate(family: Family, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Rows of decoded images along the straight line between the posterior means of x_a[i] and x_b[i]."""
    mu_a, mu_b = family.encode(x_a)[0], family.encode(x_b)[0]
    t = torch.linspace(0, 1, steps, device=mu_a.device).view(1, steps, 1)
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (pairs, steps, latent)
    return family.decode_mean(z.flatten(0, 1))


def latent_map(family: Family, x: torch.Tensor, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the posterior means of x, and how they were obtained."""
    mu = family.encode(x)[0].cpu().double().numpy()
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
