"""Gaussian diffusion math (seed 003; Ho et al. 2020, Nichol & Dhariwal 2021, Song et al. 2021).

Data x_0 live in [-1, 1]. The forward process adds noise in T steps,
q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I), so that in closed form
q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) with ᾱ_t = Π_{s≤t} (1 - β_s).

Every per-timestep tensor of a `Schedule` has T + 1 entries indexed by the timestep itself,
t = 0..T, where t = 0 is the clean data (β_0 = 0, ᾱ_0 = 1): formulas then read as in the papers,
and x_{t-1} = x_0 needs no special case. Likelihood terms are nats per image (summed over pixels).
"""

from __future__ import annotations

import math

import torch

from genlab.models.likelihoods import discretized_gaussian_log_prob, kl_standard_normal

LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02  # Ho et al.'s endpoints for T = 1000
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal: keeps β_1 from vanishing
MAX_BETA = 0.999  # Nichol & Dhariwal clip β_t so the last steps do not diverge


def linear_betas(timesteps: int) -> torch.Tensor:
    """β_1..β_T evenly spaced from 1e-4 to 0.02 for T = 1000 (Ho et al.), both ends scaled by 1000/T.

    The scaling (Nichol & Dhariwal 2021) keeps a shorter chain ending in near-pure noise, so that
    sampling from N(0, I) stays on-distribution: for T = 50 the unscaled values would leave ᾱ_T ≈ 0.6.
    """
    scale = 1000 / timesteps
    return torch.linspace(scale * LINEAR_BETA_START, min(scale * LINEAR_BETA_END, MAX_BETA), timesteps, dtype=torch.float64)


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
