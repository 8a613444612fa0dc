"""The image/label pair every dataset is reduced to, and the seeded carving of one split out of another."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.errors import DataError


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index].contiguous(), self.labels[index].contiguous())


def carve(split: Split, fraction: float, seed: int, what: str) -> tuple[Split, Split]:
    """Split off round(fraction * N) (at least 1) items chosen by a seeded permutation: (rest, carved)."""
    n = len(split)
    n_carved = max(1, round(fraction * n))
    if n_carved >= n:
        raise DataError(
            f"only {n} images left when carving the {what} split ({fraction} of them): "
            f"add images or lower data.{what}_fraction"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so that each split keeps the source order; membership alone depends on the seed.
    carved, rest = perm[:n_carved].sort().values, perm[n_carved:].sort().values
    return split.take(rest), split.take(carved)
