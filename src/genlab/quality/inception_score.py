"""Inception Score (Salimans et al. 2016) from a classifier's class probabilities."""

from __future__ import annotations

import torch


def inception_score(probs: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """exp(E_x[KL(p(y|x) || p(y))]) from probabilities (N, K); mean and std over `splits` equal parts.

    It lies in [1, K]: 1 when every prediction is the same distribution, K when predictions are confident
    and spread evenly over the K classes. The std is the population std over the parts, as in the
    original implementation (0 for splits=1).
    """
    if probs.ndim != 2 or probs.shape[0] < splits or splits < 1:
        raise ValueError(
            f"probs must be (N, K) with N >= splits >= 1, got shape {tuple(probs.shape)} and splits={splits}"
        )
    p = probs.detach().to(torch.float64)
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("probs rows must be probability distributions (non-negative, summing to 1)")

    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(dim=0, keepdim=True)
        # xlogy gives 0 * log 0 = 0; where p(y|x) > 0 the marginal is > 0 too, so no log 0 is ever used.
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(correction=0))
