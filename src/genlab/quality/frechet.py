"""Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's)."""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    return x.mean(dim=0), torch.cov(x.T, correction=1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½) between N(mu1, S1) and N(mu2, S2).

    Tr((S1 S2)^½) is taken as Σ sqrt(eig(√S1 S2 √S1)): that matrix is similar to S1 S2 but symmetric PSD,
    so a symmetric eigensolver applies and round-off can only show up as tiny negative eigenvalues, which
    are clamped to 0. Unlike scipy.linalg.sqrtm(S1 @ S2) this never yields NaN or complex values, even for
    singular covariances (fewer samples than dimensions).
    """
    device = torch.as_tensor(mu1).device
    mu1, mu2, sigma1, sigma2 = (
        torch.as_tensor(t).detach().to(device, torch.float64) for t in (mu1, mu2, sigma1, sigma2)
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"shape mismatch: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
            f"sigma {tuple(sigma1.shape)}, {tuple(sigma2.shape)}"
        )
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2

    eigvals, eigvecs = torch.linalg.eigh(sigma1)
    sqrt_sigma1 = (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt_product = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()

    diff = mu1 - mu2
    distance = diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product
    # The true value is >= 0; a result a few ulps below it is cancellation between the traces.
    return max(float(distance), 0.0)


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
