"""Generative adversarial network (seed 001): DCGAN nets, four losses, an EMA generator for sampling.

Each `train_step` is one discriminator (critic) update on the batch; every `n_critic`-th step is also
followed by one generator update on fresh noise. Images cross the Family interface in [0, 1]; the
networks work in [-1, 1] (tanh output), the DCGAN convention.
"""

from __future__ import annotations

from typing import Iterable

import torch

from genlab.config import Config
from genlab.models.base import Family, weighted_means
from genlab.models.ema import EMA
from genlab.models.gan_losses import discriminator_loss, generator_loss, gradient_penalty, mean_output
from genlab.models.gan_nets import Discriminator, Generator


class GAN(Family):
    name = "gan"
    curves = {
        "d_loss": "loss", "g_loss": "loss", "d_real": "mean D output", "d_fake": "mean D output",
        "domain_fid": "lower is better",
    }

    def __init__(self, cfg: Config, image_shape: tuple[int, int, int], levels: int, device: torch.device):
        super().__init__(image_shape, device)
        g = cfg.gan
        self.loss = g.loss
        self.latent_dim = g.latent_dim
        self.gp_weight = g.gp_weight
        self.n_critic = g.n_critic if g.n_critic is not None else (5 if g.loss == "wgan-gp" else 1)
        self.fid_every, self.fid_samples = g.eval_every, g.fid_samples
        self.metric_names = ("d_loss", "g_loss", "d_real", "d_fake") + (("gp",) if g.loss == "wgan-gp" else ())
        batch_norm = g.loss != "wgan-gp" and not g.spectral_norm
        self.generator = Generator(g.latent_dim, g.width, image_shape).to(device)
        self.discriminator = Discriminator(g.width, image_shape, batch_norm, g.spectral_norm).to(device)
        self.ema = EMA(self.generator, g.ema_decay)
        self.modules = {"generator": self.generator, "discriminator": self.discriminator, "ema": self.ema}
        adam = dict(lr=g.lr, betas=(g.beta1, g.beta2), fused=True)
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), **adam),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), **adam),
        }
        self.steps = 0  # discriminator steps so far: decides when G updates, so it is checkpointed

    def prior(self, n, gen):
        return torch.randn(n, self.latent_dim, generator=gen, device=self.device)

    @torch.no_grad()
    def generate(self, z):
        return ((self.ema(z) + 1) / 2).clamp(0, 1)

    def _game(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on (real, fake) and the game's metrics; g_loss is G's loss against this same D."""
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        d_loss = discriminator_loss(self.loss, d_real, d_fake)
        metrics = {
            "g_loss": generator_loss(self.loss, d_fake.detach()),
            "d_real": mean_output(self.loss, d_real.detach()),
            "d_fake": mean_output(self.loss, d_fake.detach()),
        }
        return d_loss, metrics

    def train_step(self, x, epoch, gen):
        real = x * 2 - 1
        with torch.no_grad():
            fake = self.generator(self.prior(len(x), gen))
        d_loss, metrics = self._game(real, fake)
        objective = d_loss
        if self.loss == "wgan-gp":  # d_loss is reported without the penalty, comparable with val
            gp = gradient_penalty(self.discriminator, real, fake, gen)
            objective = d_loss + self.gp_weight * gp
            metrics["gp"] = gp.detach()
        d_opt = self.optimizers["discriminator"]
        d_opt.zero_grad(set_to_none=True)
        objective.backward()
        d_opt.step()
        self.steps += 1
        if self.steps % self.n_critic == 0:
            self._generator_step(len(x), gen)
        return {"d_loss": d_loss.detach(), **metrics}

    def _generator_step(self, n: int, gen: torch.Generator) -> None:
        self.discriminator.requires_grad_(False)  # only G's gradients are needed
        g_loss = generator_loss(self.loss, self.discriminator(self.generator(self.prior(n, gen))))
        g_opt = self.optimizers["generator"]
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        self.discriminator.requires_grad_(True)
        self.ema.update(self.generator)

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        """The game on held-out real images against fresh samples of G (no gradient penalty)."""
        d_loss, metrics = self._game(x * 2 - 1, self.generator(self.prior(len(x), gen)))
        return {"d_loss": d_loss, **metrics}

    @torch.no_grad()
    def test_metrics(self, batches: Iterable[torch.Tensor], gen, cfg):
        self.train(False)
        return weighted_means((self.eval_step(x, 0, gen), len(x)) for x in batches)

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        return {"samples": self.sample(64, gen)}

    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state, with_optimizers=True):
        super().load_state_dict(state, with_optimizers)
        self.steps = state.get("steps", 0)
