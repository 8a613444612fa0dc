"""VAE math against closed forms and hand computations, and the family contract."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from genlab.processes.likelihoods import (
    bernoulli_log_prob,
    discretized_gaussian_log_prob,
    kl_standard_normal,
    normal_log_prob,
)

from families import Stepper, make_family


def make_vae(shape=(1, 8, 8), levels=17, **vae):
    return make_family("vae", shape, levels, **vae)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    q = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)


def test_normal_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    z, mu, logvar = (torch.randn(6, 3, generator=g) for _ in range(3))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(normal_log_prob(z, mu, logvar), expected)


def test_bernoulli_log_prob_is_exact_on_binary_pixels():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 1, 3, 3, generator=g)
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5), generator=g)
    expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), expected)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_gaussian_masses_sum_to_one(levels):
    g = torch.Generator().manual_seed(4)
    mean = torch.rand(7, generator=g) * 1.6 - 0.3  # also means outside [0, 1]
    log_scale = torch.rand(7, generator=g) * 6 - 6  # scales from 0.0025 to 1
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    for m, s in zip(mean.double(), log_scale.double()):
        x = grid.view(levels, 1, 1, 1)
        logp = discretized_gaussian_log_prob(m.expand_as(x), s.expand_as(x), x, levels)
        assert torch.all(logp <= 0)
        assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_matches_cdf_difference_in_the_middle():
    x = torch.tensor([[[[0.5]]]], dtype=torch.float64)
    mean, log_scale = torch.full_like(x, 0.4), torch.full_like(x, math.log(0.1))
    half = 0.5 / 16
    normal = Normal(torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    cdf = lambda t: normal.cdf(torch.tensor(t, dtype=torch.float64)).item()  # noqa: E731
    expected = math.log(cdf(0.5 + half) - cdf(0.5 - half))
    assert discretized_gaussian_log_prob(mean, log_scale, x, 17).item() == pytest.approx(expected, rel=1e-10)


def test_elbo_of_a_tiny_fixed_model_equals_hand_computation():
    """2-pixel images, 1-D latent: encoder constant (mu=0.3, logvar=-0.5), decoder logits = a*relu(z)+c."""
    vae = make_vae(shape=(1, 1, 2), levels=2, hidden=[1], latent_dim=1, likelihood="bernoulli")
    enc_lin, dec_hidden, dec_out = vae.encoder.body[1], vae.decoder.body[0], vae.decoder.body[2]
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.zero_()
        vae.encoder.head.bias.copy_(torch.tensor([0.3, -0.5]))
        dec_hidden.weight.fill_(1.0), dec_hidden.bias.zero_()
        dec_out.weight.copy_(torch.tensor([[2.0], [-1.0]])), dec_out.bias.copy_(torch.tensor([0.1, 0.4]))
    assert enc_lin.weight.abs().sum() == 0
    x = torch.tensor([[[[1.0, 0.0]]]])
    gen = torch.Generator().manual_seed(5)
    eps = torch.randn(1, 1, generator=torch.Generator().manual_seed(5)).item()

    recon, kl = vae.terms(x, gen)

    z = 0.3 + eps * math.exp(-0.25)
    l1, l2 = 2.0 * max(z, 0) + 0.1, -1.0 * max(z, 0) + 0.4
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    hand_recon = -(math.log(sig(l1)) + math.log(1 - sig(l2)))
    hand_kl = 0.5 * (0.3**2 + math.exp(-0.5) - 1 + 0.5)
    assert recon.item() == pytest.approx(hand_recon, rel=1e-6)
    assert kl.item() == pytest.approx(hand_kl, rel=1e-6)
    metrics = vae._metrics(recon, kl, (recon + kl).mean())
    assert metrics["elbo"].item() == pytest.approx(-(hand_recon + hand_kl), rel=1e-6)
    assert metrics["bpd"].item() == pytest.approx((hand_recon + hand_kl) / (2 * math.log(2)), rel=1e-6)


def test_iw_bound_is_above_elbo_on_the_same_draws_and_tightens_with_k():
    vae = make_vae(shape=(1, 4, 4), levels=2)
    x = torch.bernoulli(torch.full((300, 1, 4, 4), 0.3), generator=torch.Generator().manual_seed(6))
    log_w = vae.log_weights(x, 50, torch.Generator().manual_seed(7))
    iw = torch.logsumexp(log_w, 0) - math.log(50)
    assert torch.all(iw >= log_w.mean(0) - 1e-5)  # Jensen, image by image
    bounds = [-vae.iw_nll(x, k, torch.Generator().manual_seed(8)).mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]
    elbo = -sum(vae.terms(x, torch.Generator().manual_seed(9))).mean().item()
    assert bounds[2] > elbo


@pytest.mark.parametrize(
    "arch,shape",
    [("mlp", (1, 8, 8)), ("conv", (1, 8, 8)), ("conv", (1, 28, 28)), ("conv", (3, 32, 32)), ("conv", (1, 15, 15))],
)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_for_every_dataset_shape(arch, shape, likelihood):
    vae = make_vae(shape=shape, levels=256, arch=arch, likelihood=likelihood)
    x = torch.rand(5, *shape)
    assert vae.reconstruct(x, None).shape == x.shape
    samples = vae.sample(6, torch.Generator().manual_seed(0))
    assert samples.shape == (6, *shape) and samples.min() >= 0 and samples.max() <= 1
    recon, kl = vae.terms(x, torch.Generator().manual_seed(0))
    assert recon.shape == kl.shape == (5,) and torch.isfinite(recon).all()


def test_train_step_reports_consistent_elbo_terms():
    vae = make_vae()
    metrics = Stepper(vae)(torch.rand(16, 1, 8, 8), torch.Generator().manual_seed(0))
    assert set(metrics) == set(vae.metric_names)
    assert metrics["elbo"].item() == pytest.approx(-(metrics["recon"] + metrics["kl"]).item(), rel=1e-6)


def test_kl_warmup_ramps_to_beta():
    vae = make_vae(beta=2.0, kl_warmup_epochs=4)
    assert [vae.kl_weight(e) for e in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
