"""Denoising diffusion probabilistic model (seed 003): a U-Net trained on L_simple, sampled with
ancestral DDPM or DDIM, scored with the variational bound in bits/dim.

Images enter in [0, 1] and are mapped to [-1, 1], the range the schedule's noise levels are set for.
Evaluation and sampling use the EMA copy of the network. Every random draw takes the caller's
generator, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.config import Config
from genlab.errors import ConfigError
from genlab.models.base import Family
from genlab.models.diffusion import Schedule
from genlab.models.ema import EMA
from genlab.models.unet import UNet


class DDPM(Family):
    name = "ddpm"
    metric_names = ("loss",)
    curves = {"loss": "MSE per pixel"}

    def __init__(self, cfg: Config, image_shape: tuple[int, int, int], levels: int, device: torch.device):
        super().__init__(image_shape, device)
        d = cfg.ddpm
        if d.snapshot_steps > d.timesteps:
            raise ConfigError(
                f"ddpm.snapshot_steps = {d.snapshot_steps} exceeds ddpm.timesteps = {d.timesteps}: "
                "a sampler cannot take more steps than the chain has"
            )
        self.levels = levels
        self.timesteps = d.timesteps
        self.prediction = d.prediction
        self.snapshot_steps = d.snapshot_steps
        self.schedule = Schedule(d.schedule, d.timesteps, device)
        self.unet = UNet(image_shape, d.channels, d.channel_mults, d.res_blocks, d.attention).to(device)
        self.ema = EMA(self.unet, d.ema_decay)
        self.modules = {"unet": self.unet, "ema": self.ema}
        # The fused kernel updates all parameters in one pass (as in the VAE).
        self.optimizers = {"adam": torch.optim.Adam(self.unet.parameters(), lr=cfg.train.lr, fused=True)}
        # Until the sample stage configures them: the snapshot's step count (a train-stage param), η = 0.
        self.sample_steps, self.sample_eta = d.snapshot_steps, 0.0

    # --- model pieces ---------------------------------------------------------------------
    def _timesteps(self, n: int, t: int) -> torch.Tensor:
        return torch.full((n,), t, device=self.device, dtype=torch.long)

    @staticmethod
    def _noise(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)

    def predict_x0(self, net: torch.nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the network's ε or v output, clipped to the data range [-1, 1].

        Clipping only moves x̂_0 towards any x_0 in [-1, 1], so it cannot loosen the bound, and it keeps
        few-step samplers from drifting out of range (Ho et al. clip the same way when sampling).
        """
        out = net(xt, t)
        if self.prediction == "eps":
            x0 = self.schedule.x0_from_eps(xt, t, out)
        else:
            x0 = self.schedule.x0_from_v(xt, t, out)
        return x0.clamp(-1, 1)

    def simple_loss(self, net: torch.nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """L_simple: MSE per pixel between the network output and its ε (or v) target, t ~ U{1..T}."""
        x0 = 2 * x - 1
        t = torch.randint(1, self.timesteps + 1, (len(x0),), generator=gen, device=x0.device)
        eps = self._noise(x0, gen)
        xt = self.schedule.q_sample(x0, t, eps)
        target = eps if self.prediction == "eps" else self.schedule.v_from_x0_eps(x0, t, eps)
        return F.mse_loss(net(xt, t), target)

    # --- samplers (EMA network; x in [-1, 1]) ---------------------------------------------
    @torch.no_grad()
    def ddpm_sample(self, x_T: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Ancestral sampling through all T steps: x_{t-1} ~ N(μ̃(x̂_0, x_t), β̃_t I)."""
        x = x_T
        for t in range(self.timesteps, 0, -1):
            tt = self._timesteps(len(x), t)
            mean, var, _ = self.schedule.q_posterior(self.predict_x0(self.ema, x, tt), x, tt)
            if t > 1:  # β̃_1 = 0: the last step returns the mean
                mean = mean + var.sqrt() * self._noise(x, gen)
            x = mean
        return x

    @torch.no_grad()
    def ddim_sample(
        self,
        x_T: torch.Tensor,
        steps: int,
        eta: float,
        gen: torch.Generator | None,
        return_trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """DDIM (Song et al. 2021) on `steps` evenly spaced timesteps from T to 0.

        η = 0 is deterministic (gen unused); steps = T with η = 1 is ancestral DDPM with variance β̃_t,
        drawing the same noise from `gen` as `ddpm_sample`. With `return_trajectory`, also returns the
        chain's states x_T, ..., x_0 stacked as (steps + 1, N, C, H, W).
        """
        x, states = x_T, [x_T]
        times = self.schedule.ddim_times(steps)
        for t, s in zip(times[:-1], times[1:]):
            tt = self._timesteps(len(x), t)
            x0 = self.predict_x0(self.ema, x, tt)
            eps = self.schedule.eps_from_x0(x, tt, x0)  # consistent with the clipped x̂_0
            a, b, sigma = self.schedule.ddim_coefficients(t, s, eta)
            x = a * x0 + b * eps
            if sigma > 0:
                x = x + sigma * self._noise(x, gen)
            if return_trajectory:
                states.append(x)
        return (x, torch.stack(states)) if return_trajectory else x

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    # --- Family interface -----------------------------------------------------------------
    def train_step(self, x, epoch, gen):
        loss = self.simple_loss(self.unet, x, gen)
        opt = self.optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.ema.update(self.unet)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        return {"loss": self.simple_loss(self.ema, x, gen)}

    def configure_sampling(self, sample_cfg):
        if sample_cfg.steps > self.timesteps:
            raise ConfigError(
                f"sample.steps = {sample_cfg.steps} exceeds ddpm.timesteps = {self.timesteps}: "
                f"choose at most {self.timesteps} (= ancestral DDPM when sample.eta is 1)"
            )
        too_many = [k for k in sample_cfg.steps_grid if k > self.timesteps]
        if too_many:
            raise ConfigError(
                f"sample.steps_grid = {sample_cfg.steps_grid} holds {too_many}, more than ddpm.timesteps = "
                f"{self.timesteps}: use step counts of at most {self.timesteps}"
            )
        self.sample_steps, self.sample_eta = sample_cfg.steps, sample_cfg.eta

    def prior(self, n, gen):
        """x_T ~ N(0, I) of the image shape: the latent code of DDIM's deterministic map."""
        return torch.randn((n, *self.image_shape), generator=gen, device=self.device)

    @torch.no_grad()
    def generate(self, z):
        """Deterministic DDIM (η = 0) from x_T = z with the configured step count."""
        return self.to_images(self.ddim_sample(z, self.sample_steps, 0.0, None))

    @torch.no_grad()
    def sample(self, n, gen):
        """DDIM with the configured steps and η (η > 0 draws its noise from gen)."""
        return self.to_images(self.ddim_sample(self.prior(n, gen), self.sample_steps, self.sample_eta, gen))

    @torch.no_grad()
    def trajectory(self, n: int, gen: torch.Generator, frames: int) -> torch.Tensor:
        """A denoising strip: (n * frames, C, H, W) in [0, 1], row i holding sample i's chain states
        x_t at `frames` evenly spaced sampler steps from x_T (noise, shown as clamp((x+1)/2)) to x_0."""
        _, states = self.ddim_sample(
            self.prior(n, gen), self.sample_steps, self.sample_eta, gen, return_trajectory=True
        )
        picks = torch.linspace(0, self.sample_steps, frames, dtype=torch.float64).round().long()
        return self.to_images(states[picks.to(states.device)].transpose(0, 1).flatten(0, 1))

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        x = self.ddim_sample(self.prior(64, gen), self.snapshot_steps, 0.0, None)
        return {"samples": self.to_images(x)}

    def data_convention(self, binarize):
        binarised = "test images binarised once with a seeded draw; " if binarize == "dynamic" else ""
        return (
            f"{binarised}variational bound on the {self.levels}-level pixel grid (discretised Gaussian decoder): "
            "an upper bound on the discrete negative log-likelihood, as in Ho et al."
        )

    @torch.no_grad()
    def bound_terms(
        self, x: torch.Tensor, strata: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image (prior, diffusion, decoder) terms of the negative variational bound, nats.

        The decoder term L_0 (t = 1) is always evaluated; the T - 1 denoising KLs t = 2..T are split
        into `strata` contiguous strata of (nearly) equal size, one t drawn uniformly per stratum and
        image, its KL weighted by the stratum's size: an unbiased estimate of their sum. With
        strata = T - 1 every KL is evaluated once. Each term uses one draw of x_t ~ q(x_t | x_0).
        """
        x0 = 2 * x - 1
        n, s = len(x0), self.schedule
        t1 = self._timesteps(n, 1)
        x1 = s.q_sample(x0, t1, self._noise(x0, gen))
        decoder = s.decoder_nll(x0, self.predict_x0(self.ema, x1, t1), self.levels)
        diffusion = torch.zeros(n, device=x0.device, dtype=torch.float64)
        edges = [2 + (j * (self.timesteps - 1)) // strata for j in range(strata + 1)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            t = torch.randint(lo, hi, (n,), generator=gen, device=x0.device)
            x0_pred = self.predict_x0(self.ema, s.q_sample(x0, t, self._noise(x0, gen)), t)
            diffusion += (hi - lo) * s.denoising_kl(x0, x0_pred, t).double()
        return s.prior_kl(x0).double(), diffusion, decoder.double()

    @torch.no_grad()
    def test_metrics(self, batches, gen, cfg):
        """The negative variational bound in bits/dim (EMA network) and L_simple on the test split.

        bpd = prior_bpd + diffusion_bpd + decoder_bpd (L_T, Σ_{t≥2} L_{t-1} and L_0; means over images).
        evaluate.bound_strata = 0 evaluates all T + 1 terms; k > 0 estimates the T - 1 denoising KLs
        from k stratified timesteps per image (capped at T - 1; see `bound_terms`), reported as
        `bound_strata` = the number of KL timesteps per image actually used. bpd_stderr is the standard
        error of the mean over images of each image's estimate: it covers both the spread between
        images and the timestep and noise sampling.
        """
        kl_terms = self.timesteps - 1
        strata = kl_terms if cfg.evaluate.bound_strata == 0 else min(cfg.evaluate.bound_strata, kl_terms)
        parts: dict[str, list[torch.Tensor]] = {"prior": [], "diffusion": [], "decoder": []}
        loss_sum, count = 0.0, 0
        for x in batches:
            for key, term in zip(parts, self.bound_terms(x, strata, gen)):
                parts[key].append(term.cpu())
            loss_sum += self.simple_loss(self.ema, x, gen).item() * len(x)
            count += len(x)
        nats_to_bits = 1 / (self.dims * math.log(2))
        per_image = {k: torch.cat(v) * nats_to_bits for k, v in parts.items()}
        total = sum(per_image.values())
        return {
            "bpd": total.mean().item(),
            "bpd_stderr": (total.std() / math.sqrt(count)).item() if count > 1 else float("nan"),
            "prior_bpd": per_image["prior"].mean().item(),
            "diffusion_bpd": per_image["diffusion"].mean().item(),
            "decoder_bpd": per_image["decoder"].mean().item(),
            "loss": loss_sum / count,
            "bound_strata": strata,
        }
