"""Generative adversarial network (seed 001): DCGAN nets, four losses, an EMA generator for sampling.

Each `train_step` is one discriminator (critic) update on the batch; every `n_critic`-th step is also
followed by one generator update on fresh noise. Images cross the Family interface in [0, 1]; the
networks work in [-1, 1] (tanh output), the DCGAN convention.
"""

from __future__ import annotations

import torch

from genlab.models.base import DataSpec, Family, Generative, OptimizerSpec, weighted_means
from genlab.models.ema import EMA
from genlab.models.gan.losses import discriminator_loss, generator_loss, gradient_penalty, mean_output
from genlab.models.gan.nets import Discriminator, Generator
from genlab.models.gan.params import GANConfig


class GAN(Family, Generative):
    name = "gan"
    channels_last = True
    config_class = GANConfig
    curves = {
        "d_loss": "loss",
        "g_loss": "loss",
        "d_real": "mean D output",
        "d_fake": "mean D output",
        "domain_fid": "lower is better",
    }

    def __init__(self, cfg: GANConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)
        self.n_critic = cfg.n_critic if cfg.n_critic is not None else (5 if cfg.loss == "wgan-gp" else 1)
        self.metric_names = ("d_loss", "g_loss", "d_real", "d_fake") + (("gp",) if cfg.loss == "wgan-gp" else ())
        batch_norm = cfg.loss != "wgan-gp" and not cfg.spectral_norm
        self.generator = Generator(cfg.latent_dim, cfg.width, self.image_shape).to(device)
        self.discriminator = Discriminator(cfg.width, self.image_shape, batch_norm, cfg.spectral_norm).to(device)
        self.ema = EMA(self.generator, cfg.ema_decay)
        self.modules = {"generator": self.generator, "discriminator": self.discriminator, "ema": self.ema}
        self.ema_of = {"generator": (self.ema, self.generator)}
        self.steps = 0  # discriminator steps so far: decides when G updates, so it is checkpointed

    def optimizers(self):
        betas = (self.cfg.beta1, self.cfg.beta2)
        return {
            "generator": OptimizerSpec(list(self.generator.parameters()), self.cfg.lr, betas),
            "discriminator": OptimizerSpec(list(self.discriminator.parameters()), self.cfg.lr, betas),
        }

    def prior(self, n, gen):
        return torch.randn(n, self.cfg.latent_dim, generator=gen, device=self.device)

    @torch.no_grad()
    def generate(self, z):
        return ((self.ema(z) + 1) / 2).clamp(0, 1)

    def _game(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on (real, fake) and the game's metrics; g_loss is G's loss against this same D."""
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        loss = self.cfg.loss
        d_loss = discriminator_loss(loss, d_real, d_fake)
        metrics = {
            "g_loss": generator_loss(loss, d_fake.detach()),
            "d_real": mean_output(loss, d_real.detach()),
            "d_fake": mean_output(loss, d_fake.detach()),
        }
        return d_loss, metrics

    def train_step(self, x, epoch, gen, update):
        """One critic update; every n_critic-th step also one generator update on fresh noise."""
        real = x * 2 - 1
        with torch.no_grad():
            fake = self.generator(self.prior(len(x), gen))
        d_loss, metrics = self._game(real, fake)
        objective = d_loss
        if self.cfg.loss == "wgan-gp":  # d_loss is reported without the penalty, comparable with val
            gp = gradient_penalty(self.discriminator, real, fake, gen)
            objective = d_loss + self.cfg.gp_weight * gp
            metrics["gp"] = gp.detach()
        update("discriminator", objective)
        self.steps += 1
        if self.steps % self.n_critic == 0:
            self.discriminator.requires_grad_(False)  # only G's gradients are needed
            update(
                "generator", generator_loss(self.cfg.loss, self.discriminator(self.generator(self.prior(len(x), gen))))
            )
            self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.detach(), **metrics}

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        """The game on held-out real images against fresh samples of G (no gradient penalty)."""
        d_loss, metrics = self._game(x * 2 - 1, self.generator(self.prior(len(x), gen)))
        return {"d_loss": d_loss, **metrics}

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        self.train(False)
        return weighted_means((self.eval_step(x, 0, gen), len(x)) for x in batches)

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        return {"samples": self.sample(64, gen)}

    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps = state.get("steps", 0)
