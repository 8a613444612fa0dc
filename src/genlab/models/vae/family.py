"""Variational autoencoder (seeds 000/002), trained on the negative ELBO = recon + β·KL.

All likelihood terms are nats per image. `levels` is the number of discrete pixel values the
data can take (2 for binarised data, 17 for digits, 256 for 8-bit images); the Gaussian
likelihood is discretised on that grid so its numbers are true log-probabilities.
"""

from __future__ import annotations

import math

import torch

from genlab.models.base import DataSpec, Encoder, Family, Generative, OptimizerSpec, Reconstructor
from genlab.models.vae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from genlab.models.vae.params import VAEConfig
from genlab.processes.likelihoods import (
    bernoulli_log_prob,
    discretized_gaussian_log_prob,
    kl_standard_normal,
    normal_log_prob,
    standard_normal_log_prob,
)

LOG_SCALE_MIN = -7.0  # keeps the discretised Gaussian's scale above ~1e-3 of the pixel range


class VAE(Family, Generative, Encoder, Reconstructor):
    name = "vae"
    config_class = VAEConfig
    metric_names = ("loss", "elbo", "recon", "kl", "bpd")
    curves = {"elbo": "nats/image", "recon": "nats/image", "kl": "nats/image"}

    def __init__(self, cfg: VAEConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)
        c, h, w = self.image_shape
        out_shape = (c * (2 if cfg.likelihood == "gaussian" else 1), h, w)
        if cfg.arch == "mlp":
            encoder = MLPEncoder(c * h * w, cfg.hidden, cfg.latent_dim)
            decoder = MLPDecoder(cfg.latent_dim, cfg.hidden, out_shape)
        else:
            encoder = ConvEncoder(self.image_shape, cfg.channels, cfg.latent_dim)
            decoder = ConvDecoder(cfg.latent_dim, cfg.channels, out_shape)
        self.encoder, self.decoder = encoder.to(device), decoder.to(device)
        self.modules = {"encoder": self.encoder, "decoder": self.decoder}

    def optimizers(self):
        params = [p for m in self.modules.values() for p in m.parameters()]
        return {"adam": OptimizerSpec(params, self.cfg.lr)}

    # --- probabilistic pieces -------------------------------------------------------------
    def kl_weight(self, epoch: int) -> float:
        """β, ramped over the first kl_warmup_epochs epochs (epochs count from 1)."""
        if self.cfg.kl_warmup_epochs == 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, epoch / self.cfg.kl_warmup_epochs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image, from the decoder output `params`."""
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_log_prob(params, x)
        mean, log_scale = params.chunk(2, dim=1)
        return discretized_gaussian_log_prob(mean, log_scale.clamp(min=LOG_SCALE_MIN), x, self.levels)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] (what sample grids show)."""
        params = self.decoder(z)
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return params.chunk(2, dim=1)[0].clamp(0, 1)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def terms(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image (recon, kl) in nats with one posterior sample: -ELBO = recon + kl."""
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar, gen)
        recon = -self.log_likelihood(self.decoder(z), x)
        return recon, kl_standard_normal(mu, logvar)

    def _metrics(self, recon: torch.Tensor, kl: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        nelbo = (recon + kl).mean().detach()
        return {
            "loss": loss.detach(),
            "elbo": -nelbo,
            "recon": recon.mean().detach(),
            "kl": kl.mean().detach(),
            "bpd": nelbo / (self.dims * math.log(2)),
        }

    # --- Family interface -----------------------------------------------------------------
    def data_convention(self, binarize):
        if binarize == "dynamic":
            return (
                "test images binarised once with a seeded draw: exact Bernoulli log-likelihoods "
                "(published MNIST NLL convention)"
            )
        if self.cfg.likelihood == "bernoulli":
            return (
                "grey levels in [0,1] scored with Bernoulli cross-entropy: comparable with tutorial VAEs, "
                "not a normalised likelihood"
            )
        return "pixels on their discrete grid scored with a discretised Gaussian: a true discrete log-likelihood"

    def losses(self, x, epoch, gen):
        recon, kl = self.terms(x, gen)
        loss = (recon + self.kl_weight(epoch) * kl).mean()
        return {"adam": loss}, self._metrics(recon, kl, loss)

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        recon, kl = self.terms(x, gen)
        return self._metrics(recon, kl, (recon + self.kl_weight(epoch) * kl).mean())

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        """ELBO terms with one posterior sample, and the importance-weighted NLL with
        vae.iw_samples samples, averaged over images; bits/dim for both."""
        totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0, "iw_nll": 0.0}
        count = 0
        for x in batches:
            recon, kl = self.terms(x, gen)
            totals["recon"] += recon.sum().item()
            totals["kl"] += kl.sum().item()
            totals["elbo"] -= (recon + kl).sum().item()
            totals["iw_nll"] += self.iw_nll(x, self.cfg.iw_samples, gen).sum().item()
            count += len(x)
        out = {k: v / count for k, v in totals.items()}
        nats_to_bpd = 1 / (self.dims * math.log(2))
        out["bpd"] = -out["elbo"] * nats_to_bpd
        out["iw_bpd"] = out["iw_nll"] * nats_to_bpd
        out["iw_samples"] = self.cfg.iw_samples
        return out

    def prior(self, n, gen):
        return torch.randn(n, self.cfg.latent_dim, generator=gen, device=self.device)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The decoder's mean at the posterior mean: deterministic, `gen` is not used."""
        return self.generate(self.encode(x))

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        return {"samples": self.sample(64, gen), "reconstructions": self.paired_reconstructions(fixed_batch, gen)}

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int, gen: torch.Generator, chunk: int = 256) -> torch.Tensor:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), shape (k, batch)."""
        mu, logvar = self.encoder(x)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=gen, device=mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)  # (m, B, latent)
            params = self.decoder(z.flatten(0, 1))
            xs = x.unsqueeze(0).expand(m, *x.shape).flatten(0, 1)
            log_px = self.log_likelihood(params, xs).view(m, -1)
            log_w.append(log_px + standard_normal_log_prob(z) - normal_log_prob(z, mu, logvar))
        return torch.cat(log_w, dim=0)

    def iw_nll(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """Importance-weighted bound -log p̂(x) = -(logsumexp_i log w_i - log k), per image.

        By Jensen it is ≤ the k-sample estimate of -ELBO on the same draws, and it tightens
        towards -log p(x) as k grows (Burda et al. 2015).
        """
        return -(torch.logsumexp(self.log_weights(x, k, gen), dim=0) - math.log(k))
