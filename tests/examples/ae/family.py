"""Example family, part 2 of 2: a plain autoencoder (would be src/genlab/models/ae/family.py): MLP encoder and
decoder, squared error per image. It encodes and reconstructs; it does not generate (no prior)."""

from __future__ import annotations

import torch
from torch import nn

from genlab.models.base import DataSpec, Encoder, Family, OptimizerSpec, Reconstructor

from .params import AEConfig


class AE(Family, Encoder, Reconstructor):
    name = "ae"
    config_class = AEConfig
    metric_names = ("loss",)
    curves = {"loss": "squared error/image"}

    def __init__(self, cfg: AEConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)
        d, h, z = self.dims, cfg.hidden, cfg.latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, z))
        self.decoder = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, d), nn.Sigmoid())
        self.modules = {"encoder": self.encoder.to(device), "decoder": self.decoder.to(device)}

    def optimizers(self):
        return {"adam": OptimizerSpec([p for m in self.modules.values() for p in m.parameters()], self.cfg.lr)}

    def encode(self, x):
        return self.encoder(x)

    def reconstruct(self, x, gen=None):
        return self.decoder(self.encode(x)).view_as(x)

    def _loss(self, x):
        return (self.reconstruct(x) - x).pow(2).flatten(1).sum(1).mean()

    def losses(self, x, epoch, gen):
        loss = self._loss(x)
        return {"adam": loss}, {"loss": loss.detach()}

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        return {"loss": self._loss(x)}

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        losses = [(self._loss(x), len(x)) for x in batches]
        return {"loss": (sum(v * n for v, n in losses) / sum(n for _, n in losses)).item()}

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        return {"reconstructions": torch.cat([fixed_batch, self.reconstruct(fixed_batch)], dim=3)}
