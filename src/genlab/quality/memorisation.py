"""Does a model copy its training data? Nearest-neighbour distances to the training set, in a feature space,
of generated images against those of held-out real images (Meehan et al. 2020's data-copying test,
over the whole space rather than per cell).

A model that draws fresh images from the data distribution puts its samples as far from the training
set as held-out test images are: the distance distributions match, Z ≈ 0 and the copy share ≈ 5 %.
A model that copies puts them closer: Z < 0 and the share above 5 %.
"""

from __future__ import annotations

import math

import torch

# Distance entries of one row block (float64): 64 MiB.
_BLOCK_ENTRIES = 2**23
COPY_QUANTILE = 0.05


def nearest_distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (float64) from every query (N, D) to its nearest point (M, D), in row blocks."""
    queries, points = queries.detach().double(), points.detach().double()
    step = max(1, _BLOCK_ENTRIES // len(points))
    return torch.cat(
        [torch.cdist(queries[i : i + step], points).min(dim=1).values for i in range(0, len(queries), step)]
    )


def mann_whitney_z(x: torch.Tensor, y: torch.Tensor) -> float:
    """Z of the Mann–Whitney U statistic U = #{(i, j): x_i > y_j} + ½ #{ties}, under the null that x and y
    come from one distribution (mean mn/2, variance mn(m+n+1)/12; no tie correction: distances are
    continuous). Negative when x tends to be smaller than y."""
    m, n = len(x), len(y)
    y_sorted = torch.sort(y.double()).values
    below = torch.searchsorted(y_sorted, x.double(), right=False)
    not_above = torch.searchsorted(y_sorted, x.double(), right=True)
    u = float((below + not_above).double().sum()) / 2
    return (u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)


def copy_scores(to_train_generated: torch.Tensor, to_train_test: torch.Tensor) -> dict[str, float]:
    """From each image's distance to its nearest training image (generated and held-out test images):

    domain_copy_z      Mann–Whitney Z of generated vs test distances: ≈ 0 as close as fresh real images,
                       < -3 generated images sit closer to the training set than real unseen ones can
                       (one-sided p < 0.0014: copying); > 0 farther away (the usual case for an imperfect model).
    domain_copy_share  share of generated images closer to the training set than the closest 5 % of the test
                       images (0.05 when generated images are like fresh real ones; 1 when every one is a copy).
    domain_nn_generated, domain_nn_test  the median distances themselves.
    """
    threshold = torch.quantile(to_train_test.double(), COPY_QUANTILE)
    return {
        "domain_copy_z": mann_whitney_z(to_train_generated, to_train_test),
        "domain_copy_share": float((to_train_generated < threshold).double().mean()),
        "domain_nn_generated": float(to_train_generated.median()),
        "domain_nn_test": float(to_train_test.median()),
    }
