"""genlab's metric and sampler math against peer implementations, on the same inputs.

Peers (test-only, pinned in pyproject.toml / requirements.lock): pytorch-fid (FID), torch-fidelity (IS, KID),
diffusers (DDIM steps), torch_ema (EMA). Each test states its tolerance; docs/metrics.md ("Checked against
peers") lists them with every difference of convention.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from genlab.models.ema import EMA  # imports genlab.models first, which genlab.processes needs
from genlab.processes.gaussian_diffusion import GaussianDiffusion, Schedule, cosine_betas, linear_betas
from genlab.quality.frechet import fid
from genlab.quality.inception_score import inception_score
from genlab.quality.kid import mmd2_unbiased

CPU = torch.device("cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


# --- FID: pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm of S1 S2) ------------------------------


@pytest.mark.parametrize(
    ("n", "dim", "shift", "rel"),
    [
        (600, 32, 0.2, 1e-10),  # two different distributions, full-rank covariances
        (600, 32, 0.0, 1e-10),  # one distribution: FID ~ 1, all of it sampling noise
        (20, 32, 0.1, 1e-6),  # N < D: singular covariances, where sqrtm of the product is less accurate
    ],
)
def test_fid_equals_pytorch_fid(n, dim, shift, rel):
    fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="peer check needs pytorch-fid==0.3.0")
    a = randn(n, dim, seed=1)
    b = 0.8 * randn(n, dim, seed=2) @ (torch.eye(dim, dtype=torch.float64) + 0.3 * randn(dim, dim, seed=3)) + shift
    a_np, b_np = a.numpy(), b.numpy()
    theirs = fid_score.calculate_frechet_distance(
        a_np.mean(axis=0), np.cov(a_np, rowvar=False), b_np.mean(axis=0), np.cov(b_np, rowvar=False)
    )
    assert theirs > 0.5
    assert fid(a, b) == pytest.approx(theirs, rel=rel)


# --- IS: torch-fidelity's isc_features_to_metric (takes logits) ------------------------------------------------


@pytest.mark.parametrize("splits", [1, 10])
def test_inception_score_equals_torch_fidelity(splits):
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc", reason="peer check needs torch-fidelity==0.4.0")
    logits = 3 * randn(1000, 10, seed=4)  # float64: torch-fidelity softmaxes in float64 too
    # shuffle=False and N divisible by splits: its parts rows [i N / splits, (i + 1) N / splits) are
    # torch.tensor_split's. Both report the population std over the parts (np.std, ddof 0).
    theirs = metric_isc.isc_features_to_metric(logits, splits=splits, shuffle=False)
    mean, std = inception_score(logits.softmax(dim=1), splits=splits)
    assert 2 < theirs["inception_score_mean"] < 9  # neither collapsed (1) nor saturated (10)
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-9, abs=1e-12)
    if splits > 1:
        assert std > 0.01


# --- KID: torch-fidelity's kid_features_to_metric ----------------------------------------------------------------


@pytest.mark.parametrize(("scale", "shift"), [(1.1, 0.1), (1.0, 0.0)])
def test_kid_equals_torch_fidelity_on_the_whole_set(scale, shift):
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid", reason="peer check needs torch-fidelity==0.4.0")
    n = 300
    x, y = randn(n, 64, seed=5), scale * randn(n, 64, seed=6) + shift
    # kid_subset_size = N: each "subset" is a permutation of the whole set and the U-statistic is permutation
    # invariant, so every subset gives genlab's number (and their std over subsets is round-off). Features are
    # float64: torch-fidelity computes the kernel in the features' dtype.
    theirs = metric_kid.kid_features_to_metric(
        x,
        y,
        kid_subsets=3,
        kid_subset_size=n,
        kid_kernel="poly",
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,  # 1 / D
        kid_kernel_poly_coef0=1,
        verbose=False,
    )
    ours = mmd2_unbiased(x, y)
    assert ours == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10, abs=1e-14)
    assert theirs["kernel_inception_distance_std"] < 1e-12
    if shift == 0:
        assert ours < 0  # one distribution: the unbiased estimate may go (here does go) below 0, unclamped
    else:
        assert ours > 0.01


# --- DDIM: diffusers' DDIMScheduler ------------------------------------------------------------------------------


def diffusers_ddim():
    module = pytest.importorskip("diffusers.schedulers.scheduling_ddim", reason="peer check needs diffusers==0.42.1")
    return module.DDIMScheduler


@pytest.mark.parametrize("timesteps", [1000, 100])
def test_noise_schedules_equal_diffusers(timesteps):
    ddim_scheduler = diffusers_ddim()
    scale = 1000 / timesteps  # genlab scales Ho et al.'s endpoints to T (Nichol & Dhariwal); diffusers takes them
    for kind, peer, rel_beta, rel_alpha_bar in [
        (
            "linear",
            ddim_scheduler(timesteps, beta_start=1e-4 * scale, beta_end=0.02 * scale, beta_schedule="linear"),
            3e-7,
            2e-6,
        ),
        ("cosine", ddim_scheduler(timesteps, beta_schedule="squaredcos_cap_v2"), 1e-7, 5e-5),
    ]:
        ours = Schedule(kind, timesteps, CPU)
        # diffusers indexes the T noisy steps 0..T-1, genlab 1..T (0 is the data), and keeps β and ᾱ in float32,
        # genlab in float64: β agree to float32 rounding, ᾱ to float32 cumprod round-off (cosine: largest at the
        # last step, where β is clipped to 0.999 and α = 1 - β keeps few float32 digits).
        betas64 = {"linear": linear_betas, "cosine": cosine_betas}[kind](timesteps)
        np.testing.assert_allclose(peer.betas.double().numpy(), betas64.numpy(), rtol=rel_beta)
        np.testing.assert_allclose(ours.beta[1:].double().numpy(), betas64.numpy(), rtol=1e-7)  # genlab's are these
        np.testing.assert_allclose(
            peer.alphas_cumprod.double().numpy(), ours.alpha_bar64[1:].numpy(), rtol=rel_alpha_bar
        )


@pytest.mark.parametrize(("timesteps", "steps"), [(1000, 50), (1000, 1000), (100, 10), (100, 30)])
def test_ddim_timesteps_are_diffusers_trailing_spacing_shifted_by_one(timesteps, steps):
    ddim_scheduler = diffusers_ddim()
    peer = ddim_scheduler(timesteps, timestep_spacing="trailing")
    peer.set_timesteps(steps)
    ours = Schedule("linear", timesteps, CPU).ddim_times(steps)
    assert [int(t) + 1 for t in peer.timesteps] + [0] == ours
    # diffusers steps from t to t - T // steps, not to the next entry of its list: the same as genlab's grid
    # only when steps divides T (the cases compared below).
    ours_pairs = list(itertools.pairwise(ours))
    theirs_pairs = [(int(t) + 1, max(int(t) - timesteps // steps, -1) + 1) for t in peer.timesteps]
    assert (ours_pairs == theirs_pairs) == (timesteps % steps == 0)


class ToyEps(nn.Module):
    """A fixed ε̂(x_t, t): bounded, nonlinear in x and depending on genlab's t (1..T)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * x + 0.01 * t.view(-1, 1, 1, 1).to(x.dtype))


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    ("kind", "timesteps", "steps"), [("linear", 1000, 50), ("linear", 100, 100), ("cosine", 1000, 20)]
)
def test_ddim_chain_equals_diffusers_step_by_step(kind, timesteps, steps, eta):
    ddim_scheduler = diffusers_ddim()
    betas = {"linear": linear_betas, "cosine": cosine_betas}[kind](timesteps)
    # genlab clips x̂_0 to [-1, 1] and steps with the ε̂ recomputed from it: clip_sample + use_clipped_model_output.
    # The last step lands on ᾱ = 1 (the data): set_alpha_to_one.
    peer = ddim_scheduler(
        timesteps,
        trained_betas=betas.numpy(),
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    # diffusers stores ᾱ in float32 (test above); here it gets genlab's float64 ᾱ of the same β, so that the
    # comparison is of the update itself. With its own float32 ᾱ the chains differ by up to 1e-4 relative
    # (cosine, η = 1, where 1 - ᾱ_t / ᾱ_s cancels).
    peer.alphas_cumprod = torch.cumprod(1 - betas, 0)
    peer.set_timesteps(steps)
    net = ToyEps()
    x_T = torch.randn(4, 1, 8, 8, generator=gen(7))

    _, ours = GaussianDiffusion(kind, timesteps, "eps", CPU).ddim_sample(
        net, x_T, steps, eta, gen(8), return_trajectory=True
    )

    noise_gen, x, theirs, x0_preds = gen(8), x_T, [x_T], []
    for t in peer.timesteps.tolist():
        eps = net(x, torch.full((len(x),), t + 1))
        # genlab draws noise (from its generator, in order) only where σ > 0, i.e. not on the step to x_0.
        to_data = t - timesteps // steps < 0
        noise = torch.zeros_like(x) if eta == 0 or to_data else torch.randn(x.shape, generator=noise_gen)
        out = peer.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise)
        x = out.prev_sample
        theirs.append(x)
        x0_preds.append(out.pred_original_sample)
    theirs = torch.stack(theirs)

    clipped = (torch.stack(x0_preds).abs() == 1).float().mean()
    assert 0.05 < clipped < 0.95  # both the clipped and the unclipped x̂_0 paths are exercised
    # Every state x_T, ..., x_0 within 1e-5 of its largest entry (float32 states; measured: bit-identical).
    scale = theirs.flatten(1).abs().amax(dim=1)
    assert ((ours - theirs).flatten(1).abs().amax(dim=1) <= 1e-5 * scale).all()


# --- EMA: torch_ema's ExponentialMovingAverage ---------------------------------------------------------------


def small_net() -> nn.Module:
    with torch.random.fork_rng():  # seeded init without touching the global stream other tests draw from
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def perturb(model: nn.Module, seed: int) -> None:
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("decay", [0.5, 0.999])
def test_ema_equals_torch_ema_with_its_update_count_shifted_by_one(decay):
    torch_ema = pytest.importorskip("torch_ema", reason="peer check needs torch_ema==0.3")
    model = small_net()
    ours = EMA(model, decay)
    theirs = torch_ema.ExponentialMovingAverage(model.parameters(), decay=decay, use_num_updates=True)
    # Both warm up as min(decay, (1 + n) / (10 + n)), but torch_ema counts the update being made (n = 1 on the
    # first) and genlab the updates already made (n = 0): starting its count at -1 makes them the same average.
    theirs.num_updates = -1
    for step in range(20):  # decay 0.5: warm-up for 8 updates, then constant; 0.999: warm-up throughout
        perturb(model, seed=100 + step)
        ours.update(model)
        theirs.update(model.parameters())
    assert int(ours.num_updates) == 20
    for mine, peer in zip(ours.module.parameters(), theirs.shadow_params):
        torch.testing.assert_close(mine, peer, rtol=1e-12, atol=1e-12)


def test_ema_first_update_differs_from_torch_ema_default_by_the_count_offset():
    torch_ema = pytest.importorskip("torch_ema", reason="peer check needs torch_ema==0.3")
    model = small_net()
    before = [p.detach().clone() for p in model.parameters()]
    ours = EMA(model, 0.999)
    theirs = torch_ema.ExponentialMovingAverage(model.parameters(), decay=0.999)  # as shipped: count from 0
    perturb(model, seed=1)
    ours.update(model)
    theirs.update(model.parameters())
    for w0, w1, mine, peer in zip(before, model.parameters(), ours.module.parameters(), theirs.shadow_params):
        # genlab's first decay is 1/10, torch_ema's 2/11.
        torch.testing.assert_close(mine, 0.1 * w0 + 0.9 * w1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(peer, 2 / 11 * w0 + 9 / 11 * w1, rtol=1e-12, atol=1e-12)
