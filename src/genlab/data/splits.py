"""The image/label pair every dataset is reduced to, the seeded carving of one split out of another, and the
seeded draw that caps a split (data.limit)."""

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


def at_most(split: Split, limit: int | None, seed: int, what: str) -> Split:
    """At most `limit` items of `split` (data.limit: a smoke-sized run), a seeded draw of its own per split,
    kept in source order; the whole split when it is not larger or `limit` is None."""
    if limit is None or len(split) <= limit:
        return split
    from genlab.core.runtime import stream  # seeded by a hash of (seed, name), as every other draw of a run

    perm = torch.randperm(len(split), generator=stream(seed, f"data_limit/{what}"))
    return split.take(perm[:limit].sort().values)
