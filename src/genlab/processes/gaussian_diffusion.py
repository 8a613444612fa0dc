"""The Gaussian diffusion process (seed 003; Ho et al. 2020, Nichol & Dhariwal 2021, Song et al. 2021):
its schedule, training loss, samplers and variational bound, for any network ε̂/v̂(x_t, t).

Data x_0 live in [-1, 1]. The forward process adds noise in T steps,
q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I), so that in closed form
q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) with ᾱ_t = Π_{s≤t} (1 - β_s).

Every per-timestep tensor of a `Schedule` has T + 1 entries indexed by the timestep itself,
t = 0..T, where t = 0 is the clean data (β_0 = 0, ᾱ_0 = 1): formulas then read as in the papers,
and x_{t-1} = x_0 needs no special case. Likelihood terms are nats per image (summed over pixels).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.processes.likelihoods import discretized_gaussian_log_prob, kl_standard_normal

LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02  # Ho et al.'s endpoints for T = 1000
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal: keeps β_1 from vanishing
MAX_BETA = 0.999  # Nichol & Dhariwal clip β_t so the last steps do not diverge


def linear_betas(timesteps: int) -> torch.Tensor:
    """β_1..β_T evenly spaced from 1e-4 to 0.02 for T = 1000 (Ho et al.), both ends scaled by 1000/T.

    The scaling (Nichol & Dhariwal 2021) keeps a shorter chain ending in near-pure noise, so that
    sampling from N(0, I) stays on-distribution: for T = 50 the unscaled values would leave ᾱ_T ≈ 0.6.
    """
    scale = 1000 / timesteps
    return torch.linspace(
        scale * LINEAR_BETA_START, min(scale * LINEAR_BETA_END, MAX_BETA), timesteps, dtype=torch.float64
    )


def cosine_betas(timesteps: int) -> torch.Tensor:
    """β_t = 1 - ᾱ_t / ᾱ_{t-1} with ᾱ_t ∝ cos²((t/T + s) / (1 + s) · π/2), clipped at 0.999 (float64)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


class Schedule:
    """The noise schedule and every coefficient derived from it, gathered by timestep.

    Coefficients are computed in float64 (1 - ᾱ_t and the posterior variance lose digits in float32
    when β_t ~ 1e-4), then cast to `dtype` on `device` once, so a training step only gathers.
    `alpha_bar64` stays a float64 CPU copy for host-side scalar arithmetic (DDIM coefficients).
    """

    def __init__(self, kind: str, timesteps: int, device: torch.device, dtype: torch.dtype = torch.float32):
        betas = {"linear": linear_betas, "cosine": cosine_betas}[kind](timesteps)
        self.timesteps = timesteps
        beta = torch.cat([betas.new_zeros(1), betas])  # index t = 0..T
        alpha = 1 - beta
        alpha_bar = torch.cumprod(alpha, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        one_minus = 1 - alpha_bar
        # q(x_{t-1} | x_t, x_0) for t ≥ 1 (the t = 0 entries are unused; they are set to 0).
        safe = torch.where(one_minus > 0, one_minus, torch.ones_like(one_minus))
        post_var = torch.where(one_minus > 0, (1 - alpha_bar_prev) / safe * beta, torch.zeros_like(beta))
        coef_x0 = torch.where(one_minus > 0, alpha_bar_prev.sqrt() * beta / safe, torch.zeros_like(beta))
        coef_xt = torch.where(one_minus > 0, alpha.sqrt() * (1 - alpha_bar_prev) / safe, torch.zeros_like(beta))
        # KL(q(x_{t-1}|x_t,x_0) || N(μ̃(x̂_0, x_t), β̃_t)) = kl_weight_t · ||x_0 - x̂_0||² for t ≥ 2, where
        # kl_weight_t = coef_x0² / (2 β̃_t) = (SNR_{t-1} - SNR_t) / 2 with SNR_t = ᾱ_t / (1 - ᾱ_t).
        kl_weight = torch.zeros_like(beta)
        kl_weight[2:] = alpha_bar_prev[2:] * beta[2:] / (2 * one_minus[2:] * (1 - alpha_bar_prev[2:]))

        self.alpha_bar64 = alpha_bar
        cast = dict(device=device, dtype=dtype)
        self.beta = beta.to(**cast)
        self.alpha = alpha.to(**cast)
        self.alpha_bar = alpha_bar.to(**cast)
        self.sqrt_alpha_bar = alpha_bar.sqrt().to(**cast)
        self.sqrt_one_minus_alpha_bar = one_minus.sqrt().to(**cast)
        self.posterior_variance = post_var.to(**cast)
        self.posterior_log_variance = post_var.log().to(**cast)  # -inf at t = 1: q(x_0 | x_1, x_0) is a point mass
        self.posterior_coef_x0 = coef_x0.to(**cast)
        self.posterior_coef_xt = coef_xt.to(**cast)
        self.kl_weight = kl_weight.to(**cast)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (N, 1, 1, 1) to broadcast over images."""
        return values[t].view(-1, 1, 1, 1)

    # --- forward process and posterior ---------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0) = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, given the noise ε."""
        return self._at(self.sqrt_alpha_bar, t) * x0 + self._at(self.sqrt_one_minus_alpha_bar, t) * eps

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, variance, log variance) of q(x_{t-1} | x_t, x_0), for t ≥ 1:
        μ̃ = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) · x_0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · x_t,
        β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t. Variances are (N, 1, 1, 1)."""
        mean = self._at(self.posterior_coef_x0, t) * x0 + self._at(self.posterior_coef_xt, t) * xt
        return mean, self._at(self.posterior_variance, t), self._at(self.posterior_log_variance, t)

    # --- parameterisations: x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε and v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0 ---
    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (xt - self._at(self.sqrt_one_minus_alpha_bar, t) * eps) / self._at(self.sqrt_alpha_bar, t)

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (xt - self._at(self.sqrt_alpha_bar, t) * x0) / self._at(self.sqrt_one_minus_alpha_bar, t)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022): unit variance at every t, like ε."""
        return self._at(self.sqrt_alpha_bar, t) * eps - self._at(self.sqrt_one_minus_alpha_bar, t) * x0

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_alpha_bar, t) * xt - self._at(self.sqrt_one_minus_alpha_bar, t) * v

    def eps_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_one_minus_alpha_bar, t) * xt + self._at(self.sqrt_alpha_bar, t) * v

    # --- variational bound: -log p(x_0) ≤ L_T + Σ_{t=2..T} L_{t-1} + L_0, nats per image ------
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)); no parameters, it measures how far the chain is from noise."""
        mean = self.sqrt_alpha_bar[-1] * x0.flatten(1)
        return kl_standard_normal(mean, self.sqrt_one_minus_alpha_bar[-1].pow(2).log().expand_as(mean))

    def denoising_kl(self, x0: torch.Tensor, x0_pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t ≥ 2.

        p(x_{t-1} | x_t) = N(μ̃(x̂_0, x_t), β̃_t I): the model's mean is the posterior mean at its own
        estimate x̂_0, and its variance is the posterior variance β̃_t (not β_t), for three reasons:
        it is the variance the ancestral and η = 1 DDIM samplers use, so the bound describes the model
        that is sampled; with equal variances the KL is only the mean error, so it is exact in closed
        form without a variance mismatch term; and for fixed variances it gives the tighter bound
        (Nichol & Dhariwal, Sec. 3.1). The x_t terms cancel, so the KL is kl_weight_t · ||x_0 - x̂_0||²,
        which is also accurate in float32 where a difference of two means would not be.
        """
        return self.kl_weight[t] * (x0 - x0_pred).pow(2).flatten(1).sum(1)

    def decoder_nll(self, x0: torch.Tensor, x0_pred: torch.Tensor, levels: int) -> torch.Tensor:
        """L_0 = -log p(x_0 | x_1): a Gaussian with mean x̂_0 (the posterior mean at t = 1 is x̂_0)
        and variance β_1 (β̃_1 = 0 is degenerate), integrated over the bins of the `levels`-value grid
        on [-1, 1] (width 2 / (levels - 1), the end bins extended to ±∞, as in Ho et al.), so the bound
        is on a true discrete probability."""
        # Mapping [-1, 1] onto [0, 1] halves means and scales and leaves every bin's mass unchanged.
        log_scale = (0.5 * self.beta[1].log() - math.log(2)).expand_as(x0)
        return -discretized_gaussian_log_prob((x0_pred + 1) / 2, log_scale, (x0 + 1) / 2, levels)

    # --- DDIM (Song et al. 2021) ------------------------------------------------------------
    def ddim_times(self, steps: int) -> list[int]:
        """steps + 1 timesteps evenly spaced from T down to 0 (all of them when steps == T)."""
        grid = torch.linspace(self.timesteps, 0, steps + 1, dtype=torch.float64).round().long()
        return grid.tolist()

    def ddim_coefficients(self, t: int, s: int, eta: float) -> tuple[float, float, float]:
        """(a, b, σ) of the step x_s = a · x̂_0 + b · ε̂ + σ · z from x_t, s < t.

        σ² = η² (1 - ᾱ_s) / (1 - ᾱ_t) · (1 - ᾱ_t / ᾱ_s): with s = t - 1 and η = 1 this is β̃_t, and the
        step is ancestral DDPM; η = 0 is the deterministic DDIM sampler.
        """
        ab_t, ab_s = self.alpha_bar64[t].item(), self.alpha_bar64[s].item()
        var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        return math.sqrt(ab_s), math.sqrt(max(1 - ab_s - var, 0.0)), math.sqrt(var)


Prediction = Literal["eps", "v"]


class GaussianDiffusion:
    """Schedule + prediction type + loss + samplers + bound; the denoising network is an argument of
    each method, so a U-Net, its EMA copy or a transformer denoiser use the same process.

    Data x_0 are in [-1, 1]. Every random draw takes the caller's generator.
    """

    def __init__(self, kind: str, timesteps: int, prediction: Prediction, device: torch.device):
        self.schedule = Schedule(kind, timesteps, device)
        self.timesteps = timesteps
        self.prediction = prediction

    @staticmethod
    def _full(n: int, t: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), t, device=device, dtype=torch.long)

    @staticmethod
    def noise(like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)

    def predict_x0(self, net: nn.Module, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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

    def loss(self, net: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """L_simple: MSE per pixel between the network output and its ε (or v) target, t ~ U{1..T}."""
        t = torch.randint(1, self.timesteps + 1, (len(x0),), generator=gen, device=x0.device)
        eps = self.noise(x0, gen)
        xt = self.schedule.q_sample(x0, t, eps)
        target = eps if self.prediction == "eps" else self.schedule.v_from_x0_eps(x0, t, eps)
        return F.mse_loss(net(xt, t), target)

    # --- samplers -------------------------------------------------------------------------------
    @torch.no_grad()
    def ddpm_sample(self, net: nn.Module, x_T: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Ancestral sampling through all T steps: x_{t-1} ~ N(μ̃(x̂_0, x_t), β̃_t I)."""
        x = x_T
        for t in range(self.timesteps, 0, -1):
            tt = self._full(len(x), t, x.device)
            mean, var, _ = self.schedule.q_posterior(self.predict_x0(net, x, tt), x, tt)
            if t > 1:  # β̃_1 = 0: the last step returns the mean
                mean = mean + var.sqrt() * self.noise(x, gen)
            x = mean
        return x

    @torch.no_grad()
    def ddim_sample(
        self,
        net: nn.Module,
        x_T: torch.Tensor,
        steps: int,
        eta: float,
        gen: torch.Generator | None,
        return_trajectory: bool = False,
        chunk: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """DDIM (Song et al. 2021) on `steps` evenly spaced timesteps from T to 0.

        η = 0 is deterministic (gen unused); steps = T with η = 1 is ancestral DDPM with variance β̃_t,
        drawing the same noise from `gen` as `ddpm_sample`. With `return_trajectory`, also returns the
        chain's states x_T, ..., x_0 stacked as (steps + 1, N, C, H, W). `chunk`: the network sees at most
        that many images at a time (every image still takes each step before any takes the next, and the
        noise is drawn for the whole batch, so `chunk` changes no draw): smaller batches run faster where
        the activations then stay in the CPU's caches (docs/benchmarks.md §13).
        """
        x, states = x_T, [x_T]
        times = self.schedule.ddim_times(steps)
        for t, s in itertools.pairwise(times):
            tt = self._full(len(x), t, x.device)
            if chunk is None or chunk >= len(x):
                x0 = self.predict_x0(net, x, tt)
            else:
                x0 = torch.cat([self.predict_x0(net, xc, tc) for xc, tc in zip(x.split(chunk), tt.split(chunk))])
            eps = self.schedule.eps_from_x0(x, tt, x0)  # consistent with the clipped x̂_0
            a, b, sigma = self.schedule.ddim_coefficients(t, s, eta)
            x = a * x0 + b * eps
            if sigma > 0:
                x = x + sigma * self.noise(x, gen)
            if return_trajectory:
                states.append(x)
        return (x, torch.stack(states)) if return_trajectory else x

    # --- the bound ------------------------------------------------------------------------------
    @torch.no_grad()
    def bound_terms(
        self, net: nn.Module, x0: torch.Tensor, strata: int, levels: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image (prior, diffusion, decoder) terms of the negative variational bound, nats, float64.

        The decoder term L_0 (t = 1) is always evaluated; the T - 1 denoising KLs t = 2..T are split
        into `strata` contiguous strata of (nearly) equal size, one t drawn uniformly per stratum and
        image, its KL weighted by the stratum's size: an unbiased estimate of their sum. With
        strata = T - 1 every KL is evaluated once. Each term uses one draw of x_t ~ q(x_t | x_0).
        `levels` is the number of values a pixel takes (the decoder's discretisation grid).
        """
        n, s = len(x0), self.schedule
        t1 = self._full(n, 1, x0.device)
        x1 = s.q_sample(x0, t1, self.noise(x0, gen))
        decoder = s.decoder_nll(x0, self.predict_x0(net, x1, t1), levels)
        diffusion = torch.zeros(n, device=x0.device, dtype=torch.float64)
        edges = [2 + (j * (self.timesteps - 1)) // strata for j in range(strata + 1)]
        for lo, hi in itertools.pairwise(edges):
            t = torch.randint(lo, hi, (n,), generator=gen, device=x0.device)
            x0_pred = self.predict_x0(net, s.q_sample(x0, t, self.noise(x0, gen)), t)
            diffusion += (hi - lo) * s.denoising_kl(x0, x0_pred, t).double()
        return s.prior_kl(x0).double(), diffusion, decoder.double()
