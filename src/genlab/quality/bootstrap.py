"""Spreads of sample metrics: the bootstrap over the image sets a metric compares, and FID's extrapolation
to infinitely many images (FID∞, Chong & Forsyth 2020).

Every metric `m` gets `m_std`: the standard deviation (ddof 1) of `m` over `resamples` bootstrap
resamples, each set (generated, test, train) drawn with replacement on its own, so the spread covers
both the generated and the real images. docs/metrics.md explains how to read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from genlab.quality.frechet import fid

Indices = Mapping[str, torch.Tensor | None]


def with_spreads(
    statistics: Callable[[Indices], dict[str, float]],
    sizes: Mapping[str, int],
    resamples: int,
    gen: torch.Generator,
) -> dict[str, float]:
    """statistics(every set whole) plus `<key>_std` over `resamples` resamples (none when resamples is 0).

    `statistics` maps {set name: indices into that set, or None for the whole set} to metrics; a set that
    must be resampled with another one (a reconstruction and its original) shares its indices by name.
    """
    point = statistics(dict.fromkeys(sizes))
    if resamples == 0:
        return point
    if resamples < 2:
        raise ValueError(f"a spread needs at least 2 resamples, got {resamples}")
    draws = []
    threads = torch.get_num_threads()
    # A resample's work is many small matrices (128 x 128 eigh: 3.5 ms on one thread, 14 ms on two, which
    # wake and sleep for every call), so the loop runs on one thread; the point estimates keep them all.
    torch.set_num_threads(1)
    try:
        for _ in range(resamples):
            draws.append(statistics({name: torch.randint(n, (n,), generator=gen) for name, n in sizes.items()}))
    finally:
        torch.set_num_threads(threads)
    spreads = {
        f"{key}_std": float(torch.tensor([d[key] for d in draws], dtype=torch.float64).std(correction=1))
        for key in point
    }
    return {**point, **spreads}


def fid_infinity(
    a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, fractions=(0.5, 0.625, 0.75, 0.875, 1.0), draws: int = 4
) -> tuple[float, float]:
    """(FID∞, its standard error): FID at m = fraction·n images of both sets (drawn without replacement,
    `draws` times per smaller m) fitted by least squares as FID(m) = FID∞ + c/m, extrapolated to 1/m = 0.

    FID's bias grows like 1/m (Chong & Forsyth 2020 fix the real statistics and vary the generated set;
    here both sets shrink together, which keeps the 1/m form). The error is the intercept's OLS standard
    error, so it says how well the points pin the line down, not the seed-to-seed spread.
    """
    n = min(len(a), len(b))
    xs, ys = [], []
    for fraction in fractions:
        m = max(2, round(fraction * n))
        for _ in range(1 if m == n else draws):
            pick_a = torch.randperm(len(a), generator=gen)[:m]
            pick_b = torch.randperm(len(b), generator=gen)[:m]
            xs.append(1.0 / m)
            ys.append(fid(a[pick_a], b[pick_b]))
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    residual = y - design @ coef
    dof = len(x) - 2
    sigma2 = float(residual @ residual) / dof
    intercept_var = sigma2 * float(torch.linalg.inv(design.T @ design)[0, 0])
    return float(coef[0]), math.sqrt(intercept_var)
