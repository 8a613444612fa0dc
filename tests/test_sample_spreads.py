"""KID, the bootstrap spreads, FID∞ and the memorisation check, against closed forms and known cases."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from scipy import stats

from genlab.quality import fid, prdc
from genlab.quality.bootstrap import fid_infinity, with_spreads
from genlab.quality.kid import mmd2_unbiased
from genlab.quality.memorisation import copy_scores, mann_whitney_z, nearest_distances

prdc_module = importlib.import_module("genlab.quality.prdc")  # the package attribute is the function


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- KID ------------------------------------------------------------------------------------------------


def u_statistic_of_squared_mean(values: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} v_i v_j / (n(n-1)): the unbiased estimate of (E v)²."""
    n = len(values)
    return (values.sum() ** 2 - (values**2).sum()) / (n * (n - 1))


def test_kid_in_one_dimension_equals_its_moment_form():
    # With D = 1, (xy + 1)³ = x³y³ + 3x²y² + 3xy + 1, so MMD² = Σ_p c_p (m_p(X) - m_p(Y))² over p = 3, 2, 1
    # with c = 1, 3, 3, and its unbiased estimate uses the U-statistic of each squared moment.
    x = torch.randn(300, 1, generator=gen(0), dtype=torch.float64)
    y = 0.8 * torch.randn(200, 1, generator=gen(1), dtype=torch.float64) + 0.4
    expected = 0.0
    for power, weight in ((3, 1), (2, 3), (1, 3)):
        px, py = x[:, 0] ** power, y[:, 0] ** power
        cross = px.mean() * py.mean()
        expected += weight * float(u_statistic_of_squared_mean(px) + u_statistic_of_squared_mean(py) - 2 * cross)
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)


def test_kid_of_a_resample_leaves_out_pairs_of_copies():
    x = torch.randn(60, 4, generator=gen(2), dtype=torch.float64)
    y = torch.randn(50, 4, generator=gen(3), dtype=torch.float64) + 0.5
    ix, iy = torch.randint(60, (60,), generator=gen(4)), torch.randint(50, (50,), generator=gen(5))
    a, b = x[ix], y[iy]

    def kernel(u, v):
        return (u @ v.T / 4 + 1) ** 3

    keep_a, keep_b = ix[:, None] != ix[None, :], iy[:, None] != iy[None, :]
    brute = kernel(a, a)[keep_a].mean() + kernel(b, b)[keep_b].mean() - 2 * kernel(a, b).mean()
    assert mmd2_unbiased(a, b, ix, iy) == pytest.approx(float(brute), rel=1e-10)
    assert mmd2_unbiased(a, b) > mmd2_unbiased(a, b, ix, iy)  # copies paired with each other inflate it


def test_kid_of_reconstructions_leaves_out_each_image_paired_with_its_own_reconstruction():
    x = torch.randn(80, 4, generator=gen(23), dtype=torch.float64)
    recon = x + 0.05 * torch.randn(80, 4, generator=gen(24), dtype=torch.float64)
    assert mmd2_unbiased(x, x, paired=True) == pytest.approx(0.0, abs=1e-9)  # perfect reconstructions score 0
    assert mmd2_unbiased(recon, x) < -0.01 < mmd2_unbiased(recon, x, paired=True)  # pairs kept in pull it below 0
    ids = torch.randint(80, (80,), generator=gen(25))
    a, b = recon[ids], x[ids]

    def kernel(u, v):
        return (u @ v.T / 4 + 1) ** 3

    other = ids[:, None] != ids[None, :]
    brute = kernel(a, a)[other].mean() + kernel(b, b)[other].mean() - 2 * kernel(a, b)[other].mean()
    assert mmd2_unbiased(a, b, ids, ids, paired=True) == pytest.approx(float(brute), rel=1e-10)
    with pytest.raises(ValueError, match="paired"):
        mmd2_unbiased(x, x[:50], paired=True)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    x = torch.randn(1000, 8, generator=gen(6))
    same = mmd2_unbiased(x, torch.randn(1000, 8, generator=gen(7)))
    shifted = [mmd2_unbiased(x, torch.randn(1000, 8, generator=gen(7)) + s) for s in (0.2, 0.5)]
    assert abs(same) < 0.2 * shifted[0] and shifted[0] < shifted[1]


# --- bootstrap --------------------------------------------------------------------------------------------


def test_bootstrap_spread_of_a_mean_is_its_standard_error():
    values = torch.randn(400, generator=gen(8), dtype=torch.float64) * 3.0

    def mean(ix):
        return {"mean": float(values[ix["x"]].mean()) if ix["x"] is not None else float(values.mean())}

    out = with_spreads(mean, {"x": 400}, 400, gen(9))
    assert out["mean"] == pytest.approx(float(values.mean()))
    assert out["mean_std"] == pytest.approx(float(values.std()) / math.sqrt(400), rel=0.1)
    assert with_spreads(mean, {"x": 400}, 400, gen(9)) == out  # one seed, one answer
    assert with_spreads(mean, {"x": 400}, 0, gen(9)) == {"mean": out["mean"]}
    with pytest.raises(ValueError, match="at least 2 resamples"):
        with_spreads(mean, {"x": 400}, 1, gen(9))


def test_prdc_of_a_resample_never_takes_a_copy_of_a_point_for_its_neighbour():
    real = torch.randn(100, 6, generator=gen(10), dtype=torch.float64)
    ids = torch.randint(100, (100,), generator=gen(11))
    resample = real[ids]
    (radii,) = prdc_module._kth_neighbour_radii(resample, ids, (3,))
    dist = torch.cdist(resample, resample).masked_fill(ids[:, None] == ids[None, :], math.inf)
    assert torch.allclose(radii, dist.sort(dim=1).values[:, 2]) and (radii > 0).all()
    fake = torch.randn(80, 6, generator=gen(12), dtype=torch.float64)
    # Without the ids a point drawn twice is its own neighbour at distance 0: its ball is empty.
    assert prdc(resample, fake)["coverage"] < prdc(resample, fake, real_ids=ids)["coverage"]


# --- FID∞ -------------------------------------------------------------------------------------------------


def test_fid_infinity_removes_the_small_sample_bias():
    # Two samples of one distribution: the true FID is 0, so FID at n = 600 in 32 dimensions is all bias.
    a = torch.randn(600, 32, generator=gen(12), dtype=torch.float64)
    b = torch.randn(600, 32, generator=gen(13), dtype=torch.float64)
    at_n = fid(a, b)
    infinity, error = fid_infinity(a, b, gen(14))
    assert at_n > 0.8 and 0 < error < 0.2 and abs(infinity) < 0.2 * at_n
    assert fid_infinity(a, b, gen(14)) == (infinity, error)


# --- memorisation -----------------------------------------------------------------------------------------


def test_mann_whitney_z_equals_scipys():
    x = torch.randn(80, generator=gen(15)) + 0.3
    y = torch.randn(120, generator=gen(16))
    u = stats.mannwhitneyu(x.numpy(), y.numpy(), method="asymptotic", use_continuity=False).statistic
    assert mann_whitney_z(x, y) == pytest.approx((u - 80 * 120 / 2) / math.sqrt(80 * 120 * 201 / 12), rel=1e-9)


def test_copy_scores_tell_copies_from_fresh_draws():
    train = torch.randn(2000, 8, generator=gen(17))
    test = torch.randn(300, 8, generator=gen(18))
    fresh = torch.randn(300, 8, generator=gen(19))
    copies = train[:300] + 0.01 * torch.randn(300, 8, generator=gen(20))
    to_test = nearest_distances(test, train)
    honest = copy_scores(nearest_distances(fresh, train), to_test)
    copying = copy_scores(nearest_distances(copies, train), to_test)
    assert abs(honest["domain_copy_z"]) < 3 and honest["domain_copy_share"] < 0.12
    assert copying["domain_copy_z"] < -10 and copying["domain_copy_share"] == 1.0
    assert copying["domain_nn_generated"] < 0.1 < honest["domain_nn_generated"]


def test_nearest_distances_is_the_same_whatever_the_block_size(monkeypatch):
    import genlab.quality.memorisation as memorisation

    queries, points = torch.randn(50, 3, generator=gen(21)), torch.randn(70, 3, generator=gen(22))
    whole = nearest_distances(queries, points)
    assert torch.equal(whole, torch.cdist(queries.double(), points.double()).min(dim=1).values)
    monkeypatch.setattr(memorisation, "_BLOCK_ENTRIES", 3 * 70 + 5)
    assert torch.allclose(nearest_distances(queries, points), whole, rtol=1e-12)  # cdist rounds by block size
