"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) of generated features.

Each real point X_i gets a ball B(X_i, NND_k(X_i)) whose radius is the distance to its k-th nearest
other real point (likewise for fake points); "inside" is a strict "<", as in Naeem et al.'s reference code.
  precision = fraction of fake points inside some real ball (k = k_pr)
  recall    = fraction of real points inside some fake ball (k = k_pr)
  density   = (1 / kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))]  (k = k_dc; can exceed 1)
  coverage  = (1 / N) Σ_i 1[∃ j: Y_j ∈ B(X_i, NND_k(X_i))]  (k = k_dc)
"""

from __future__ import annotations

import torch

# Entries of one distance block (float64): 2**23 * 8 bytes = 64 MiB, so 10,000 x 10,000 never sits in memory.
_BLOCK_ENTRIES = 2**23


def _row_blocks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, _BLOCK_ENTRIES // n_cols)
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _kth_neighbour_radii(points: torch.Tensor, ids: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """For each k in ks, the distance from every point to its k-th nearest *other* point: one with another id
    (the point itself, and in a bootstrap resample its copies, are not neighbours)."""
    radii = []
    for rows in _row_blocks(len(points), len(points)):
        dist = torch.cdist(points[rows], points).masked_fill(ids[rows, None] == ids[None, :], torch.inf)
        radii.append(dist.topk(max(ks), dim=1, largest=False).values)
    nearest = torch.cat(radii)
    return [nearest[:, k - 1] for k in ks]


def prdc(
    real: torch.Tensor,
    fake: torch.Tensor,
    k_pr: int = 3,
    k_dc: int = 5,
    real_ids: torch.Tensor | None = None,
    fake_ids: torch.Tensor | None = None,
) -> dict[str, float]:
    """Precision, recall (k-NN balls with k = k_pr), density and coverage (k = k_dc) of fake vs real features.

    `real_ids`/`fake_ids` name each point's source (a bootstrap resample's indices; default: all distinct),
    so that copies of one point drawn with replacement never count as each other's neighbours. Every
    pairwise distance is computed once per pair of sets (real-real, fake-fake, real-fake), in float64 and
    in row blocks of at most 64 MiB.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must be (N, D) and (M, D), got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(k_pr, k_dc) < 1 or len(real) <= max(k_pr, k_dc) or len(fake) <= k_pr:
        raise ValueError(f"need k >= 1 and more points than k: N={len(real)}, M={len(fake)}, k_pr={k_pr}, k_dc={k_dc}")
    real = real.detach().to(torch.float64)
    fake = fake.detach().to(real.device, torch.float64)
    real_ids = torch.arange(len(real)) if real_ids is None else real_ids
    fake_ids = torch.arange(len(fake)) if fake_ids is None else fake_ids

    real_radius_pr, real_radius_dc = _kth_neighbour_radii(real, real_ids.to(real.device), (k_pr, k_dc))
    (fake_radius_pr,) = _kth_neighbour_radii(fake, fake_ids.to(real.device), (k_pr,))

    fake_in_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    real_balls_per_fake = torch.zeros(len(fake), dtype=torch.float64, device=real.device)
    real_in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    real_ball_covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for rows in _row_blocks(len(real), len(fake)):
        dist = torch.cdist(real[rows], fake)  # (block, M)
        fake_in_real_ball |= (dist < real_radius_pr[rows, None]).any(dim=0)
        inside_dc = dist < real_radius_dc[rows, None]
        real_balls_per_fake += inside_dc.sum(dim=0)
        real_ball_covered[rows] = inside_dc.any(dim=1)
        real_in_fake_ball[rows] = (dist < fake_radius_pr[None, :]).any(dim=1)

    return {
        "precision": float(fake_in_real_ball.double().mean()),
        "recall": float(real_in_fake_ball.double().mean()),
        "density": float(real_balls_per_fake.mean() / k_dc),
        "coverage": float(real_ball_covered.double().mean()),
    }
