"""The rectified-flow process (Liu et al. 2023; Esser et al. 2024) as FlowMo trains and samples it.

Convention (FlowMo's code): t = 0 is data x, t = 1 is noise z ~ N(0, I), the path is the straight line
x_t = (1 − t) · x + t · z, and the network predicts the velocity v = dx_t/dt = z − x (the paper writes x − z).
Sampling therefore integrates dx/dt = v from t = 1 down to t = 0: x_{t−Δ} = x_t − Δ · v.

Nothing here knows about a network: a denoiser enters as `velocity_fn(x_t, t, conditional) -> v` with t of
shape (N,) and `conditional` False asking for the unconditional (null-code) velocity used by guidance.
Every random draw takes an explicit `torch.Generator`, which must live on the device the draw is made on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

VelocityFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]

UNIFORM_SHARE = 0.1  # FlowMo's "fat lognormal": 10 % of training times from U(0, 1)
STEPS, RHO, GUIDANCE = 25, 4.0, 1.5  # FlowMo's evaluation sampler (base.yaml: 25 steps, "pow_0.25", cfg 1.5)
POSTTRAIN_STEPS = 8  # k of the stage-1B sampling chain


def _per_sample(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Reshape per-sample times (N,) to broadcast over the other dimensions of `like`; scalars pass through."""
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        return t.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))
    return t


def interpolate(x: torch.Tensor, z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 − t) · x + t · z, with t a scalar or one time per sample."""
    t = _per_sample(t, x)
    return (1 - t) * x + t * z


def velocity_target(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The regression target v = z − x (constant along each straight path)."""
    return z - x


def one_step_prediction(x_t: torch.Tensor, t: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """x̂ = x_t − t · v: the data estimate from one velocity prediction (exact if v is exact)."""
    return x_t - _per_sample(t, x_t) * v


def sample_t_with_branch(
    n: int,
    gen: torch.Generator,
    uniform_share: float = UNIFORM_SHARE,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thick-tailed logit-normal times and which samples came from the uniform branch, both (n,).

    t = sigmoid(N(0, 1)), replaced by U(0, 1) where an independent per-sample U(0, 1) draw falls below
    `uniform_share` (FlowMo: torch.where(rand <= 0.9, t, rand)). The logit-normal alone almost never visits
    t ≈ 1, yet FlowMo's decoder must predict well from pure noise since its code is so informative.
    """
    device = gen.device if device is None else device
    logit = torch.randn(n, generator=gen, device=device)
    from_uniform = torch.rand(n, generator=gen, device=device) < uniform_share
    uniform = torch.rand(n, generator=gen, device=device)
    t = torch.where(from_uniform, uniform, torch.sigmoid(logit))
    return t.to(dtype), from_uniform


def sample_t(
    n: int,
    gen: torch.Generator,
    uniform_share: float = UNIFORM_SHARE,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n,) training times from FlowMo's thick-tailed logit-normal (see `sample_t_with_branch`)."""
    return sample_t_with_branch(n, gen, uniform_share, device, dtype)[0]


def schedule(n_steps: int, rho: float = RHO) -> torch.Tensor:
    """The shifted Euler grid t_i = (i / n)^ρ for i = n, ..., 0: (n + 1,) float64, from exactly 1 to exactly 0.

    ρ = 1 is the uniform grid. ρ > 1 crowds the steps near t = 0 (low noise) and makes the first step from
    t = 1 large: FlowMo's ρ = 4 (its "pow_0.25") first jumps close to the mean of p(x | c), then spends most
    steps on fine detail. ρ → ∞ would be a single regression step to E[x | c].
    """
    if n_steps < 1:
        raise ValueError(f"need at least one step, got {n_steps}")
    return (torch.arange(n_steps, -1, -1, dtype=torch.float64) / n_steps) ** rho


def sigma_to_t(sigma: float | torch.Tensor) -> float | torch.Tensor:
    """EDM noise level σ (x + σ · ε) to flow time: x_t / (1 − t) = x + t/(1 − t) · z, so t = σ / (1 + σ)."""
    return sigma / (1 + sigma)


# FlowMo's guidance interval, σ ∈ (0.17, 1.02) ↦ t ∈ [0.1453, 0.5050].
GUIDANCE_INTERVAL = (sigma_to_t(0.17), sigma_to_t(1.02))


def euler_sample(
    velocity_fn: VelocityFn,
    z: torch.Tensor,
    steps: int = STEPS,
    rho: float = RHO,
    guidance: float = GUIDANCE,
    interval: tuple[float, float] | None = GUIDANCE_INTERVAL,
    return_trajectory: bool = False,
) -> torch.Tensor:
    """Integrate the flow ODE from z at t = 1 to t = 0 on `schedule(steps, rho)` with Euler steps.

    Classifier-free guidance v = v_u + w · (v_c − v_u) is used at the steps whose start time t lies in the
    closed `interval` (all steps if None); elsewhere, and whenever w = 1, only the conditional velocity is
    evaluated, so those steps cost one network call. Runs under the caller's grad mode (wrap in
    torch.no_grad() for inference). Returns x_0, or with `return_trajectory` every state, (steps + 1, *z.shape).
    """
    grid = schedule(steps, rho).tolist()
    x, states = z, [z]
    for t, t_next in itertools.pairwise(grid):
        times = z.new_full((z.shape[0],), t)
        v = velocity_fn(x, times, True)
        if guidance != 1 and (interval is None or interval[0] <= t <= interval[1]):
            v_u = velocity_fn(x, times, False)
            v = v_u + guidance * (v - v_u)
        x = x - (t - t_next) * v
        states.append(x)
    return torch.stack(states) if return_trajectory else x


def random_time_grid(
    n: int, k: int, gen: torch.Generator, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(n, k + 1) per-sample descending grids from exactly 1 to exactly 0 for k Euler steps.

    As in FlowMo's `reconstruct_checkpoint`, the k step lengths of a sample are proportional to k independent
    U(0, 1) draws (normalised to sum to 1), so post-training sees a different schedule every time and the
    decoder does not overfit to one test-time grid.
    """
    device = gen.device if device is None else device
    cumulative = torch.rand(n, k, generator=gen, device=device).cumsum(dim=1)
    grid = 1 - cumulative / cumulative[:, -1:]  # last column is exactly 1 − 1 = 0
    return torch.cat([torch.ones_like(grid[:, :1]), grid], dim=1).to(dtype)


def _euler_step(velocity_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    return x - _per_sample(dt, x) * velocity_fn(x, t, True)


def sample_with_grad(
    velocity_fn: VelocityFn,
    z: torch.Tensor,
    k: int = POSTTRAIN_STEPS,
    *,
    gen: torch.Generator,
    checkpoint: bool = True,
) -> torch.Tensor:
    """Differentiable k-step Euler sample from z (stage 1B, mode-seeking post-training): returns x_0.

    Each sample follows its own `random_time_grid` (drawn with `gen` on z's device) and gradients flow through
    the whole chain, so a perceptual loss on the result trains the decoder on what it actually generates.
    Memory/compute: without checkpointing autograd keeps the activations of all k network evaluations (k times
    one forward's activations); with `checkpoint=True` each step keeps only its input x_t and re-runs its
    forward during backward, so memory is that of one evaluation plus k image-sized tensors, for roughly one
    extra forward per step (≈ 4/3 of the plain forward + backward cost). `velocity_fn` must be deterministic
    for the recomputation to match (dropout would need its RNG state preserved, which torch does by default).
    """
    grid = random_time_grid(z.shape[0], k, gen, device=z.device, dtype=z.dtype)
    x = z
    for i in range(k):
        t, dt = grid[:, i], grid[:, i] - grid[:, i + 1]
        if checkpoint:
            x = activation_checkpoint(_euler_step, velocity_fn, x, t, dt, use_reentrant=False)
        else:
            x = _euler_step(velocity_fn, x, t, dt)
    return x
