"""GAN family: losses and gradient penalty against hand computations, network shapes, update rules."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.config.experiment import config_from_dict
from genlab.core import checkpoint
from genlab.models.gan.losses import discriminator_loss, generator_loss, gradient_penalty, mean_output
from genlab.models.gan.nets import Discriminator, Generator

from families import Stepper, build_from, make_family, train_run

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 0.0, 1.0])


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_logistic_losses_match_hand_computation():
    d = _mean(-math.log(_sig(r)) for r in REAL.tolist()) + _mean(-math.log(1 - _sig(f)) for f in FAKE.tolist())
    for kind in ("bce", "minimax"):
        assert discriminator_loss(kind, REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert generator_loss("bce", FAKE).item() == pytest.approx(
        _mean(-math.log(_sig(f)) for f in FAKE.tolist()), rel=1e-6
    )
    assert generator_loss("minimax", FAKE).item() == pytest.approx(
        _mean(math.log(1 - _sig(f)) for f in FAKE.tolist()), rel=1e-6
    )
    assert mean_output("bce", REAL).item() == pytest.approx(_mean(_sig(r) for r in REAL.tolist()), rel=1e-6)


def test_wasserstein_lsgan_and_hinge_losses_match_hand_computation():
    r, f = REAL.tolist(), FAKE.tolist()
    assert discriminator_loss("wgan-gp", REAL, FAKE).item() == pytest.approx(_mean(f) - _mean(r))
    assert generator_loss("wgan-gp", FAKE).item() == pytest.approx(-_mean(f))
    lsgan_d = 0.5 * _mean((v - 1) ** 2 for v in r) + 0.5 * _mean(v**2 for v in f)
    assert discriminator_loss("lsgan", REAL, FAKE).item() == pytest.approx(lsgan_d)
    assert generator_loss("lsgan", FAKE).item() == pytest.approx(0.5 * _mean((v - 1) ** 2 for v in f))
    hinge_d = _mean(max(0.0, 1 - v) for v in r) + _mean(max(0.0, 1 + v) for v in f)
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(hinge_d)
    assert generator_loss("hinge", FAKE).item() == pytest.approx(-_mean(f))
    assert mean_output("hinge", REAL).item() == pytest.approx(_mean(r))


def test_logistic_loss_stays_finite_for_extreme_logits():
    huge = torch.tensor([1e4, -1e4])
    assert torch.isfinite(discriminator_loss("bce", huge, -huge)) and torch.isfinite(generator_loss("bce", -huge))


@pytest.mark.parametrize("norm", [1.0, 3.0, 0.25])
def test_gradient_penalty_of_a_linear_critic_is_its_known_norm(norm):
    # D(x) = <a, x> has gradient a everywhere, so the penalty is (|a| - 1)^2 wherever it is evaluated.
    a = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = a / a.norm() * norm
    critic = lambda x: (x * a).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))
    assert gp.item() == pytest.approx((norm - 1) ** 2, abs=1e-5)


def test_gradient_penalty_of_a_quadratic_critic_uses_per_image_mixing():
    # D(x) = |x|^2 / 2 has gradient x, so the penalty is the mean of (|x̂_i| - 1)^2 at the mixed points.
    real, fake = torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4)
    gp = gradient_penalty(lambda x: 0.5 * (x**2).flatten(1).sum(1), real, fake, torch.Generator().manual_seed(3))
    alpha = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    mixed = alpha * real + (1 - alpha) * fake
    assert gp.item() == pytest.approx(((mixed.flatten(1).norm(dim=1) - 1) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 15, 15)])
@pytest.mark.parametrize("spectral", [False, True])
def test_networks_adapt_to_the_dataset_shape(shape, spectral):
    g = Generator(16, 8, shape)
    d = Discriminator(8, shape, batch_norm=not spectral, spectral_norm=spectral)
    images = g(torch.randn(3, 16))
    assert images.shape == (3, *shape) and images.min() >= -1 and images.max() <= 1
    assert d(images).shape == (3,)


def _gan(**gan):
    return make_family("gan", **gan)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_a_step_updates_both_networks_and_the_ema():
    gan = _gan(loss="bce")
    g, d, ema = _weights(gan.generator), _weights(gan.discriminator), _weights(gan.ema)
    metrics = Stepper(gan)(torch.rand(16, 1, 8, 8), torch.Generator().manual_seed(0))
    assert _changed(g, gan.generator) and _changed(d, gan.discriminator) and _changed(ema, gan.ema)
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake"} and 0 < metrics["d_real"] < 1


def test_critic_only_steps_update_only_the_critic():
    gan = _gan(loss="wgan-gp")  # n_critic defaults to 5 for wgan-gp
    assert gan.n_critic == 5
    gen, step = torch.Generator().manual_seed(0), Stepper(gan)
    x = torch.rand(16, 1, 8, 8)
    g, ema = _weights(gan.generator), _weights(gan.ema)
    for _ in range(4):
        d = _weights(gan.discriminator)
        metrics = step(x, gen)
        assert _changed(d, gan.discriminator) and not _changed(g, gan.generator) and not _changed(ema, gan.ema)
        assert metrics["gp"] >= 0
    step(x, gen)  # the fifth critic step is followed by a generator step
    assert _changed(g, gan.generator) and _changed(ema, gan.ema)


def test_samples_come_from_the_ema_generator_in_unit_range():
    gan = _gan()
    gan.train(False)
    z = gan.prior(6, torch.Generator().manual_seed(0))
    images = gan.generate(z)
    assert images.shape == (6, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(images, ((gan.ema.module(z) + 1) / 2).clamp(0, 1))


def _fit(raw, data, ckpt=None, state=None):
    return train_run(config_from_dict(raw), data, ckpt, state)


# A constant lr, so that raising train.epochs on resume continues the same trajectory.
GAN_RUN = {
    "model": {"family": "gan"},
    "gan": {"loss": "wgan-gp", "n_critic": 2, "latent_dim": 8, "width": 8},
    "train": {"epochs": 3, "batch_size": 128, "lr_schedule": "constant"},
}


def test_gan_training_is_deterministic_and_resumes_bit_for_bit(digits, tmp_path):
    full = _fit(GAN_RUN, digits)
    assert full == _fit(GAN_RUN, digits)
    assert {"train_d_loss", "train_g_loss", "train_d_real", "train_d_fake", "train_gp", "val_d_loss"} <= set(full[0])
    ckpt = tmp_path / "train.pt"
    _fit({**GAN_RUN, "train": {**GAN_RUN["train"], "epochs": 2}}, digits, ckpt)
    state = checkpoint.load(ckpt)
    assert set(state["model"]["modules"]) == {"generator", "discriminator", "ema"}
    assert set(state["optimizers"]) == {"generator", "discriminator"} and state["model"]["steps"] > 0
    resumed = _fit({**GAN_RUN, "train": {**GAN_RUN["train"], "resume": True}}, digits, ckpt, state)
    assert resumed == full


def test_gan_trains_channels_last_and_its_weights_sample_the_same_in_the_default_layout(digits):
    cfg = config_from_dict({**GAN_RUN, "train": {**GAN_RUN["train"], "epochs": 1}})
    trained = build_from(cfg, digits)
    train_run(cfg, digits, family=trained)
    conv = next(
        m.weight for m in trained.discriminator.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    )
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fresh = build_from(cfg, digits)  # as evaluate and sample load a model file: contiguous weights
    fresh.load_state_dict(trained.state_dict())
    for family in (trained, fresh):
        family.train(False)
    z = trained.prior(8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(trained.generate(z), fresh.generate(z), rtol=1e-5, atol=1e-6)


def test_fid_scorer_runs_every_eval_every_epochs_and_after_the_last(digits):
    cfg = config_from_dict({**GAN_RUN, "gan": {**GAN_RUN["gan"], "eval_every": 2}})
    calls = []

    def scorer(fam):
        calls.append(fam.modules["generator"].training)
        return {"domain_fid": 1.0}

    history = train_run(cfg, digits, scorer=scorer)
    assert [("val_domain_fid" in row) for row in history] == [False, True, True]
    assert calls == [False, False]  # scored in eval mode
