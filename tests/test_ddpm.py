"""DDPM: the diffusion math against closed forms and Bayes' rule, the samplers, the bound, and the
family contract. Tiny CPU models on 8x8 images, a few seconds in all."""

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch.distributions import Normal, kl_divergence

from genlab.core.errors import ConfigError
from genlab.core.inference import bf16_unsupported, check_precision, sampling
from genlab.evaluation.scoring import sample_in_batches
from genlab.models.ddpm.unet import UNet
from genlab.pipeline.trained import prepare_networks
from genlab.processes.gaussian_diffusion import Schedule

from families import CPU, Stepper, family_config, make_family

F64 = torch.float64


def make_ddpm(shape=(1, 8, 8), levels=17, seed=0, **ddpm):
    """The tiny DDPM; its sampler step counts shrink with a shorter chain (ddpm.timesteps)."""
    t = ddpm.get("timesteps", 20)
    fitted = {"snapshot_steps": min(4, t), "sampler_steps": min(5, t), "steps_grid": [min(k, t) for k in (2, 5, 20)]}
    return make_family("ddpm", shape, levels, seed, **{**fitted, **ddpm})


def bound(model, x, strata, g):
    """The model's per-image bound terms on images x in [0, 1]."""
    return model.process.bound_terms(model.ema, 2 * x - 1, strata, model.levels, g)


def gen(seed):
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits in [0, 1]: 17 grey levels (0..16 / 16)."""
    return torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16


# --- schedule and forward process ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [10, 1000])
def test_schedules_are_monotone_with_alpha_bar_in_unit_interval(kind, timesteps):
    s = Schedule(kind, timesteps, CPU, F64)
    beta, alpha_bar = s.beta[1:], s.alpha_bar[1:]
    assert torch.all((beta > 0) & (beta <= 0.999))
    assert torch.all((alpha_bar > 0) & (alpha_bar < 1))
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1]), "ᾱ_t must fall with t"
    if kind == "linear":
        assert torch.all(beta[1:] > beta[:-1])
        scale = 1000 / timesteps  # Ho et al.'s 1e-4 -> 0.02 at T = 1000, scaled for shorter chains
        assert (beta[0].item(), beta[-1].item()) == pytest.approx((1e-4 * scale, min(0.02 * scale, 0.999)))
    else:
        assert torch.all(beta[1:] >= beta[:-1])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_form_marginal_equals_iterated_one_step_moments(kind):
    """x_t = sqrt(1-β_t) x_{t-1} + sqrt(β_t) ε keeps x_t Gaussian: iterate its mean and variance."""
    s, x0 = Schedule(kind, 50, CPU, F64), 0.7
    mean, var = x0, 0.0
    for t in range(1, 51):
        beta = s.beta[t].item()
        mean, var = math.sqrt(1 - beta) * mean, (1 - beta) * var + beta
        assert s.sqrt_alpha_bar[t].item() * x0 == pytest.approx(mean, rel=1e-12)
        assert s.sqrt_one_minus_alpha_bar[t].item() ** 2 == pytest.approx(var, rel=1e-12)


def test_q_sample_matches_the_iterated_forward_process_in_distribution():
    """Simulate the one-step chain and q_sample with n draws each; means and variances agree within
    5 standard errors (SE of a mean sqrt(v/n), of a Gaussian variance v·sqrt(2/(n-1)), both samples)."""
    n, g, x0 = 100_000, gen(0), torch.full((100_000, 1, 1, 1), 0.7, dtype=F64)
    s = Schedule("linear", 30, CPU, F64)
    x = x0.clone()
    for t in range(1, 31):
        x = (1 - s.beta[t]).sqrt() * x + s.beta[t].sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
        if t in (1, 10, 30):
            tt = torch.full((n,), t)
            direct = s.q_sample(x0, tt, torch.randn(x.shape, generator=g, dtype=F64))
            v = 1 - s.alpha_bar[t].item()
            assert abs(x.mean() - direct.mean()) < 5 * math.sqrt(2 * v / n)
            assert abs(x.var() - direct.var()) < 5 * v * math.sqrt(4 / (n - 1))
            assert abs(direct.var() - v) < 5 * v * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_matches_the_seed_formulas(kind):
    s, T = Schedule(kind, 40, CPU, F64), 40
    beta = {"linear": torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=F64), "cosine": s.beta[1:]}[kind]
    alpha_bar = torch.cumprod(1 - beta, 0)
    g = gen(1)
    x0, xt = torch.randn(T - 1, 1, 2, 2, generator=g, dtype=F64), torch.randn(T - 1, 1, 2, 2, generator=g, dtype=F64)
    t = torch.arange(2, T + 1)
    ab, ab_prev, b = (v.view(-1, 1, 1, 1) for v in (alpha_bar[t - 1], alpha_bar[t - 2], beta[t - 1]))
    mean, var, logvar = s.q_posterior(x0, xt, t)
    expected_var = (1 - ab_prev) / (1 - ab) * b
    expected_mean = ab_prev.sqrt() * b / (1 - ab) * x0 + (1 - b).sqrt() * (1 - ab_prev) / (1 - ab) * xt
    torch.testing.assert_close(var, expected_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(logvar, expected_var.log(), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-14)
    # t = 1: the posterior is a point mass at x_0.
    mean1, var1, _ = s.q_posterior(x0[:1], xt[:1], torch.tensor([1]))
    assert var1.item() == 0 and torch.allclose(mean1, x0[:1])


@pytest.mark.parametrize("kind,t", [("linear", 5), ("cosine", 10)])
def test_posterior_equals_bayes_rule_on_a_grid(kind, t):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0), normalised numerically for a scalar."""
    s, x0, xt = Schedule(kind, 20, CPU, F64), torch.tensor(0.4, dtype=F64), torch.tensor(-0.3, dtype=F64)
    grid = torch.linspace(-3, 3, 600_001, dtype=F64)
    log_post = Normal(s.alpha[t].sqrt() * grid, s.beta[t].sqrt()).log_prob(xt) + Normal(
        s.sqrt_alpha_bar[t - 1] * x0, s.sqrt_one_minus_alpha_bar[t - 1]
    ).log_prob(grid)
    w = torch.softmax(log_post, 0)
    num_mean = (w * grid).sum()
    num_var = (w * (grid - num_mean) ** 2).sum()
    mean, var, _ = s.q_posterior(x0.view(1, 1, 1, 1), xt.view(1, 1, 1, 1), torch.tensor([t]))
    assert mean.item() == pytest.approx(num_mean.item(), rel=1e-7)
    assert var.item() == pytest.approx(num_var.item(), rel=1e-6)


def test_eps_x0_v_conversions_round_trip():
    s, g = Schedule("cosine", 100, CPU, F64), gen(2)
    x0, eps = torch.rand(6, 1, 3, 3, generator=g, dtype=F64) * 2 - 1, torch.randn(6, 1, 3, 3, generator=g, dtype=F64)
    t = torch.tensor([1, 2, 30, 60, 99, 100])
    xt = s.q_sample(x0, t, eps)
    v = s.v_from_x0_eps(x0, t, eps)
    for got, want in [
        (s.x0_from_eps(xt, t, eps), x0),
        (s.eps_from_x0(xt, t, x0), eps),
        (s.x0_from_v(xt, t, v), x0),
        (s.eps_from_v(xt, t, v), eps),
    ]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# --- bound terms -----------------------------------------------------------------------------
def test_kl_terms_match_torch_distributions():
    s, g = Schedule("linear", 30, CPU, F64), gen(3)
    x0, x0_pred = (torch.rand(4, 1, 2, 2, generator=g, dtype=F64) * 2 - 1 for _ in range(2))
    xt, t = torch.randn(4, 1, 2, 2, generator=g, dtype=F64), torch.tensor([2, 3, 15, 30])
    mean_q, var, _ = s.q_posterior(x0, xt, t)
    mean_p, _, _ = s.q_posterior(x0_pred, xt, t)
    expected = kl_divergence(Normal(mean_q, var.sqrt()), Normal(mean_p, var.sqrt())).flatten(1).sum(1)
    torch.testing.assert_close(s.denoising_kl(x0, x0_pred, t), expected, rtol=1e-9, atol=1e-12)
    q_T = Normal(s.sqrt_alpha_bar[-1] * x0, s.sqrt_one_minus_alpha_bar[-1])
    expected_prior = kl_divergence(q_T, Normal(torch.zeros_like(x0), torch.ones_like(x0))).flatten(1).sum(1)
    torch.testing.assert_close(s.prior_kl(x0), expected_prior, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_decoder_is_a_normalised_distribution_over_the_grid(levels):
    """Σ over the `levels` grid values of p(x_0 | x_1) = 1 for any predicted mean."""
    s = Schedule("linear", 1000, CPU, F64)
    grid = (torch.arange(levels, dtype=F64) / (levels - 1) * 2 - 1).view(-1, 1, 1, 1)
    for mean in (-1.0, -0.37, 0.0, 0.999, 1.0):
        nll = s.decoder_nll(grid, torch.full_like(grid, mean), levels)
        assert torch.logsumexp(-nll, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


def test_bound_terms_are_finite_and_sum_to_bpd(digits):
    model = make_ddpm(schedule="cosine", bound_strata=5)
    m = model.test_metrics([digits[:8], digits[8:20]], gen(4))
    assert set(m) == {"bpd", "bpd_stderr", "prior_bpd", "diffusion_bpd", "decoder_bpd", "loss", "bound_strata"}
    assert all(math.isfinite(v) for v in m.values())
    assert m["bpd"] == pytest.approx(m["prior_bpd"] + m["diffusion_bpd"] + m["decoder_bpd"], rel=1e-12)
    assert m["bound_strata"] == 5 and m["bpd_stderr"] > 0 and m["prior_bpd"] > 0 and m["diffusion_bpd"] > 0


def test_stratified_bound_with_one_timestep_per_stratum_is_the_exact_bound(digits):
    """bound_strata = 0 (exact), = T - 1 and ≥ T all evaluate every term once, drawing identically."""
    results = [
        make_ddpm(schedule="cosine", bound_strata=k).test_metrics([digits[:6]], gen(5)) for k in (0, 19, 20, 500)
    ]
    assert all(r == results[0] for r in results) and results[0]["bound_strata"] == 19


def test_stratified_bound_is_unbiased(digits):
    """The mean of many 2-stratum estimates (strata of 4 and 5 KL terms) matches the mean of many exact
    evaluations (which still draw x_t) within 4 combined standard errors (~2% of the bound here, while
    dropping the stratum-size weights would be off by ~80%); the stratified draws do vary more."""
    model = make_ddpm(schedule="cosine", timesteps=10)
    x, g = digits[:4], gen(6)

    def draws(strata, reps):
        return torch.stack([sum(bound(model, x, strata, g)).mean() for _ in range(reps)])

    exact, strat = draws(9, 30), draws(2, 150)
    se = math.sqrt(exact.var() / len(exact) + strat.var() / len(strat))
    assert strat.std() > 2 * exact.std(), "stratified draws should add timestep-sampling noise"
    assert abs(exact.mean() - strat.mean()) < 4 * se


# --- samplers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_eta_one_and_all_steps_has_the_ddpm_variance(kind):
    s = Schedule(kind, 50, CPU, F64)
    assert s.ddim_times(50) == list(range(50, -1, -1))
    for t in range(1, 51):
        _a, _b, sigma = s.ddim_coefficients(t, t - 1, 1.0)
        assert sigma**2 == pytest.approx(s.posterior_variance[t].item(), rel=1e-10, abs=1e-300)
        assert s.ddim_coefficients(t, t - 1, 0.0)[2] == 0


def test_ddim_with_eta_one_and_all_steps_reproduces_ancestral_ddpm():
    model = make_ddpm(timesteps=10)
    x_T = model.prior(5, gen(7))
    process, net = model.process, model.ema
    ddim = process.ddim_sample(net, x_T, 10, 1.0, gen(8))
    ddpm = process.ddpm_sample(net, x_T, gen(8))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ddim, process.ddim_sample(net, x_T, 10, 1.0, gen(9)))


def test_ddim_sampling_contract():
    model = make_ddpm(timesteps=20, sampler_steps=4, eta=0.5, steps_grid=[2, 20])
    states = model.process.ddim_sample(model.ema, model.prior(3, gen(0)), 4, 0.0, None, return_trajectory=True)[1]
    assert states.shape == (5, 3, 1, 8, 8)
    z = model.prior(3, gen(0))
    torch.testing.assert_close(model.generate(z), model.generate(z), rtol=0, atol=0)  # η = 0: deterministic
    a, b, c = model.sample(3, gen(1)), model.sample(3, gen(1)), model.sample(3, gen(2))
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    strip = model.trajectory(2, gen(3), frames=3)
    assert strip.shape == (6, 1, 8, 8) and strip.min() >= 0 and strip.max() <= 1
    first = model.prior(2, gen(3))  # frame 0 of each row is x_T itself
    torch.testing.assert_close(strip[0::3], ((first + 1) / 2).clamp(0, 1))
    assert model.snapshot(None, gen(4))["samples"].shape == (64, 1, 8, 8)


def test_config_rejects_more_sampler_steps_than_timesteps():
    with pytest.raises(ConfigError, match=r"ddpm\.sampler_steps = 21 exceeds ddpm\.timesteps = 20"):
        family_config("ddpm", sampler_steps=21)
    with pytest.raises(ConfigError, match=r"ddpm\.steps_grid.*\[50, 1000\]"):
        family_config("ddpm", steps_grid=[10, 50, 1000])
    with pytest.raises(ConfigError, match=r"ddpm\.snapshot_steps = 4 exceeds ddpm\.timesteps = 3"):
        family_config("ddpm", timesteps=3, sampler_steps=3, steps_grid=[3])


# --- network and training --------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,mults,lowest", [((1, 8, 8), [1, 2], 4), ((1, 28, 28), [1, 2, 2, 2], 7), ((3, 32, 32), [1, 2, 2], 8)]
)
def test_unet_keeps_the_input_shape_without_padding(shape, mults, lowest):
    net = UNet(shape, channels=8, channel_mults=mults, res_blocks=1, attention=True)
    seen = []
    net.mid[1].register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    out = net(torch.randn(2, *shape), torch.tensor([1, 500]))
    assert out.shape == (2, *shape) and seen == [lowest]


def test_v_prediction_trains(digits):
    g, x, step = gen(15), digits[:64], Stepper(make_ddpm(prediction="v", schedule="cosine"))
    losses = [step(x, g)["loss"].item() for _ in range(40)]
    assert all(map(math.isfinite, losses))
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])


def test_data_convention_names_the_grid():
    model = make_ddpm()
    assert "17-level" in model.data_convention("none")
    assert model.data_convention("dynamic").startswith("test images binarised")


def test_trained_tiny_model_bound_lies_between_zero_and_the_uniform_code(digits):
    """Any discrete model's bound is ≥ -log2 p ≥ 0 bits/dim, and the uniform distribution over the 17
    grey levels costs log2 17 = 4.09. An untrained network's bound exceeds that (≈ 5.1-5.8 here: its
    ε-errors are weighted by (SNR_{t-1} - SNR_t) / 2), so the model is trained first: 150 Adam steps
    on digits teach it the mostly-black background and coarse strokes, and its bound falls to ≈ 3.6
    ± 0.04, below the uniform code by > 10 standard errors and below the untrained bound (the cosine
    schedule ends in pure noise at T = 50, so the prior term is negligible)."""
    model = make_ddpm(timesteps=50, schedule="cosine", attention=False, ema_decay=0.99, bound_strata=0, lr=3e-3)
    test = [digits[:128]]
    untrained = model.test_metrics(test, gen(16))
    g, step = gen(17), Stepper(model)
    for _ in range(150):
        step(digits[128:][torch.randint(0, len(digits) - 128, (64,), generator=g)], g)
    trained = model.test_metrics(test, gen(16))
    assert 0 < trained["bpd"] < math.log2(17) - 3 * trained["bpd_stderr"]
    assert trained["bpd"] < untrained["bpd"]
    assert trained["prior_bpd"] < 1e-3


# --- sampling at the hardware's pace (genlab.core.inference; sample.precision, sample.compile) ---------------
def _capabilities(monkeypatch, **flags):
    """Pretend the CPU has (or lacks) the bf16 instruction sets torch reports."""
    caps = {**torch.cpu.get_capabilities(), "avx512_bf16": False, "amx_bf16": False, **flags}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)


def test_fp32_sampling_context_gives_the_samples_of_before_bit_for_bit():
    model = make_ddpm(timesteps=20, sampler_steps=5)
    before = model.sample(6, gen(1))
    with sampling("fp32", CPU):
        after = model.sample(6, gen(1))
        again = model.sample(6, gen(1))
    assert torch.equal(after, before) and torch.equal(again, before)  # deterministic, and today's samples
    assert after.is_inference() and after.shape == (6, 1, 8, 8) and after.dtype == torch.float32
    assert after.min() >= 0 and after.max() <= 1


def test_samples_do_not_depend_on_the_batches_they_are_drawn_in():
    """The noise of n images is the same drawn in one batch or several (same generator order), so the batch
    size of evaluate/sample changes no image beyond float rounding of differently blocked kernels."""
    model = make_ddpm(timesteps=20, sampler_steps=5, channels=8)
    with sampling("fp32", CPU):
        noise = [sample_in_batches(model.prior, 10, gen(5), bs) for bs in (10, 4, 3)]
        images = [sample_in_batches(model.sample, 10, gen(5), bs) for bs in (10, 4, 3)]
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    for other in images[1:]:
        torch.testing.assert_close(other, images[0], rtol=0, atol=1e-4)


def test_bf16_sampling_is_refused_on_a_cpu_without_bf16_units(monkeypatch):
    _capabilities(monkeypatch)
    assert "neither AVX512-BF16 nor AMX" in bf16_unsupported(CPU)
    with pytest.raises(ConfigError, match=r"sample\.precision = bf16 on cpu: .*neither AVX512-BF16 nor AMX.*use fp32"):
        check_precision("bf16", CPU)
    with pytest.raises(ConfigError, match="AVX512-BF16"), sampling("bf16", CPU):
        pass
    check_precision("fp32", CPU)  # fp32 runs anywhere
    model = make_ddpm()
    with pytest.raises(ConfigError, match="AVX512-BF16"):
        prepare_networks(model, "bf16", compile=False)


@pytest.mark.parametrize("unit", ["avx512_bf16", "amx_bf16"])
def test_bf16_sampling_on_a_cpu_autocasts_and_keeps_convolutions_contiguous(monkeypatch, unit):
    _capabilities(monkeypatch, **{unit: True})
    assert bf16_unsupported(CPU) is None
    model = make_ddpm(timesteps=20, sampler_steps=5)
    fp32 = model.sample(4, gen(1))
    prepare_networks(model, "fp32", compile=False)
    assert model.ema.module.stem.weight.is_contiguous()  # fp32 leaves the networks as they were
    prepare_networks(model, "bf16", compile=False)
    # channels-last is for CUDA's bf16 kernels; oneDNN's bf16 convolutions were 2.6x slower in it
    assert model.ema.module.stem.weight.is_contiguous()
    with sampling("bf16", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        bf16 = model.sample(4, gen(1))
    assert bf16.dtype == torch.float32 and bf16.min() >= 0 and bf16.max() <= 1
    assert 0 < (bf16 - fp32).abs().mean() < 0.05  # moved by rounding, not another sample


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_in_chunks_draws_the_same_noise_and_gives_the_same_samples(eta):
    """`chunk` only splits the network's calls: every image takes each step before any takes the next and the
    η noise is drawn for the whole batch, so only float rounding of the smaller calls can differ."""
    model = make_ddpm(timesteps=20)
    x_T = model.prior(7, gen(2))
    whole = model.process.ddim_sample(model.ema, x_T, 5, eta, gen(3))
    for chunk in (7, 3, 1):
        chunked = model.process.ddim_sample(model.ema, x_T, 5, eta, gen(3), chunk=chunk)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)
    assert model.chunk == 64  # on a CPU the family samples in chunks of CPU_SAMPLE_CHUNK
