"""Log-densities in nats, summed over every dimension except the batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.special import log_ndtr

LOG_2PI = math.log(2 * math.pi)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in closed form."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z.pow(2)).sum(dim=-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum of x·log σ(l) + (1-x)·log(1-σ(l)).

    An exact log-likelihood when x is binary; for grey levels in [0, 1] it is the cross-entropy
    convention of most VAE tutorials (not a normalised density), and the docs say so.
    """
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -nll.flatten(1).sum(dim=1)


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(a) - Φ(b)) for a > b, accurate in both tails."""
    # In the upper tail Φ(a) and Φ(b) both round to 1; Φ(a)-Φ(b) = Φ(-b)-Φ(-a) keeps precision.
    upper = (a + b) > 0
    hi = torch.where(upper, -b, a)
    lo = torch.where(upper, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp((log_lo - log_hi).clamp(max=-1e-12)))


def discretized_gaussian_log_prob(
    mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor, levels: int
) -> torch.Tensor:
    """Probability mass of x on a grid of `levels` values in [0, 1] under N(mean, exp(log_scale)²).

    Each grid value owns the interval of half a step either side; the two end values own the tails,
    so the masses sum to exactly 1 and the result is a true discrete log-likelihood (≤ 0).
    """
    half_step = 0.5 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x + half_step - mean) * inv_scale
    lower = (x - half_step - mean) * inv_scale
    inner = _log_diff_ndtr(upper, lower)
    log_cdf_upper = log_ndtr(upper)  # x at the lowest level: mass of (-inf, x + half_step]
    log_sf_lower = log_ndtr(-lower)  # x at the highest level: mass of [x - half_step, inf)
    logp = torch.where(x < half_step, log_cdf_upper, torch.where(x > 1 - half_step, log_sf_lower, inner))
    return logp.flatten(1).sum(dim=1)
