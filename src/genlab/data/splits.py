"""The image/label pair every dataset is reduced to, the seeded carving of one split out of another, and the
seeded draw that caps a split (data.limit): both as indices, so that no image is copied before it is written."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.core.errors import DataError


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def carve(n: int, fraction: float, seed: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, carved) that split n items, round(fraction * n) (at least 1) of them carved off by a
    seeded permutation."""
    n_carved = max(1, round(fraction * n))
    if n_carved >= n:
        raise DataError(
            f"only {n} images left when carving the {what} split ({fraction} of them): "
            f"add images or lower data.{what}_fraction"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so that each split keeps the source order; membership alone depends on the seed.
    return perm[n_carved:].sort().values, perm[:n_carved].sort().values


def at_most(n: int, limit: int | None, seed: int, what: str) -> torch.Tensor:
    """Indices of at most `limit` of n items (data.limit: a smoke-sized run), a seeded draw of its own per
    split, kept in source order; all n when there are not more or `limit` is None."""
    if limit is None or n <= limit:
        return torch.arange(n)
    from genlab.core.runtime import stream  # seeded by a hash of (seed, name), as every other draw of a run

    perm = torch.randperm(n, generator=stream(seed, f"data_limit/{what}"))
    return perm[:limit].sort().values
