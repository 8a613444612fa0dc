"""Denoising diffusion probabilistic model (seed 003): a U-Net trained on L_simple, sampled with
ancestral DDPM or DDIM, scored with the variational bound in bits/dim.

The family owns the networks (U-Net + its EMA copy); genlab.processes.gaussian_diffusion owns the
schedule, loss, samplers and bound. Images enter in [0, 1] and are mapped to [-1, 1], the range the
schedule's noise levels are set for. Evaluation and sampling use the EMA network.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab.core.runtime import stream
from genlab.core.visualise import save_grid, save_labelled_rows
from genlab.models.base import DataSpec, ExtraFigures, Family, Generative, OptimizerSpec
from genlab.models.ddpm.params import DDPMConfig
from genlab.models.ddpm.unet import UNet
from genlab.models.ema import EMA
from genlab.processes.gaussian_diffusion import GaussianDiffusion

TRAJECTORY_ROWS, TRAJECTORY_FRAMES = 8, 11
# Images the U-Net sees at a time when sampling on a CPU: 28x28 DDIM ran 1.2-1.5x faster in chunks of 64 than
# in evaluate's batches of 256 (activations in cache; docs/benchmarks.md §13). A GPU takes the whole batch.
CPU_SAMPLE_CHUNK = 64


class DDPM(Family, Generative, ExtraFigures):
    name = "ddpm"
    config_class = DDPMConfig
    metric_names = ("loss",)
    curves = {"loss": "MSE per pixel"}

    def __init__(self, cfg: DDPMConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)
        self.process = GaussianDiffusion(cfg.schedule, cfg.timesteps, cfg.prediction, device)
        self.unet = UNet(self.image_shape, cfg.channels, cfg.channel_mults, cfg.res_blocks, cfg.attention).to(device)
        self.ema = EMA(self.unet, cfg.ema_decay)
        self.modules = {"unet": self.unet, "ema": self.ema}
        self.ema_of = {"adam": (self.ema, self.unet)}
        self.chunk = CPU_SAMPLE_CHUNK if device.type == "cpu" else None

    def optimizers(self):
        return {"adam": OptimizerSpec(list(self.unet.parameters()), self.cfg.lr)}

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    # --- Family interface -----------------------------------------------------------------
    def losses(self, x, epoch, gen):
        loss = self.process.loss(self.unet, 2 * x - 1, gen)
        return {"adam": loss}, {"loss": loss.detach()}

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        return {"loss": self.process.loss(self.ema, 2 * x - 1, gen)}

    def prior(self, n, gen):
        """x_T ~ N(0, I) of the image shape: the latent code of DDIM's deterministic map."""
        return torch.randn((n, *self.image_shape), generator=gen, device=self.device)

    @torch.no_grad()
    def generate(self, z):
        """Deterministic DDIM (η = 0) from x_T = z with ddpm.sampler_steps steps."""
        x = self.process.ddim_sample(self.ema, z, self.cfg.sampler_steps, 0.0, None, chunk=self.chunk)
        return self.to_images(x)

    @torch.no_grad()
    def sample(self, n, gen):
        """DDIM with ddpm.sampler_steps and ddpm.eta (η > 0 draws its noise from gen)."""
        x_T = self.prior(n, gen)
        x = self.process.ddim_sample(self.ema, x_T, self.cfg.sampler_steps, self.cfg.eta, gen, chunk=self.chunk)
        return self.to_images(x)

    @torch.no_grad()
    def trajectory(self, n: int, gen: torch.Generator, frames: int) -> torch.Tensor:
        """A denoising strip: (n * frames, C, H, W) in [0, 1], row i holding sample i's chain states
        x_t at `frames` evenly spaced sampler steps from x_T (noise, shown as clamp((x+1)/2)) to x_0."""
        steps = self.cfg.sampler_steps
        _, states = self.process.ddim_sample(
            self.ema, self.prior(n, gen), steps, self.cfg.eta, gen, return_trajectory=True
        )
        picks = torch.linspace(0, steps, frames, dtype=torch.float64).round().long()
        return self.to_images(states[picks.to(states.device)].transpose(0, 1).flatten(0, 1))

    @torch.no_grad()
    def figures(self, out_dir: Path, seed: int, images: torch.Tensor) -> list[Path]:
        """trajectory.png (x_T -> x_0 along the sampler's steps) and steps_grid.png (the same x_T
        sampled with each count of ddpm.steps_grid)."""
        strip = self.trajectory(TRAJECTORY_ROWS, stream(seed, "trajectory", self.device), TRAJECTORY_FRAMES)
        save_grid(strip, out_dir / "trajectory.png", nrow=TRAJECTORY_FRAMES)
        x_T = self.prior(16, stream(seed, "steps_grid_start", self.device))
        rows = [
            self.to_images(
                self.process.ddim_sample(self.ema, x_T, k, self.cfg.eta, stream(seed, "steps_grid", self.device))
            )
            for k in self.cfg.steps_grid
        ]
        save_labelled_rows(rows, [f"{k} steps" for k in self.cfg.steps_grid], out_dir / "steps_grid.png")
        return [out_dir / "trajectory.png", out_dir / "steps_grid.png"]

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        x = self.process.ddim_sample(self.ema, self.prior(64, gen), self.cfg.snapshot_steps, 0.0, None)
        return {"samples": self.to_images(x)}

    def data_convention(self, binarize):
        binarised = "test images binarised once with a seeded draw; " if binarize == "dynamic" else ""
        return (
            f"{binarised}variational bound on the {self.levels}-level pixel grid (discretised Gaussian decoder): "
            "an upper bound on the discrete negative log-likelihood, as in Ho et al."
        )

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        """The negative variational bound in bits/dim (EMA network) and L_simple on the test split.

        bpd = prior_bpd + diffusion_bpd + decoder_bpd (L_T, Σ_{t≥2} L_{t-1} and L_0; means over images).
        ddpm.bound_strata = 0 evaluates all T + 1 terms; k > 0 estimates the T - 1 denoising KLs from k
        stratified timesteps per image (capped at T - 1; see GaussianDiffusion.bound_terms), reported as
        `bound_strata` = the number of KL timesteps per image actually used. bpd_stderr is the standard
        error of the mean over images of each image's estimate: it covers both the spread between
        images and the timestep and noise sampling.
        """
        kl_terms = self.cfg.timesteps - 1
        strata = kl_terms if self.cfg.bound_strata == 0 else min(self.cfg.bound_strata, kl_terms)
        parts: dict[str, list[torch.Tensor]] = {"prior": [], "diffusion": [], "decoder": []}
        loss_sum, count = 0.0, 0
        for x in batches:
            x0 = 2 * x - 1
            for key_, term in zip(parts, self.process.bound_terms(self.ema, x0, strata, self.levels, gen)):
                parts[key_].append(term.cpu())
            loss_sum += self.process.loss(self.ema, x0, gen).item() * len(x)
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
