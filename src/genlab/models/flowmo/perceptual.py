"""Perceptual distances from the pipeline's perceptual network (stage `perceptual`, a small CNN classifier).

FlowMo uses LPIPS-VGG in stage 1A and ResNet-50 logits in stage 1B; neither is available offline, and a
network trained on ImageNet would not know 8x8 digits anyway. Their small-scale stand-ins here:

- `lpips`: LPIPS's form with uniform layer weights — every conv layer's activations unit-normalised over
  channels at each position, then the squared distance averaged over positions and summed over layers;
- `logits_mse`: the mean squared difference of the network's logits.

The domain classifier that scores rFID is deliberately not used: a loss and its judge must differ.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.models.classifier import DomainClassifier

EPS = 1e-10


class PerceptualDistance(nn.Module):
    """Frozen distances between image batches in [0, 1], one value per image pair (N,)."""

    def __init__(self, net: DomainClassifier):
        super().__init__()
        self.net = net.requires_grad_(False).train(False)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, h = [], x * 2.0 - 1.0  # the network's own input centring (DomainClassifier.features)
        for layer in self.net.conv:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                maps.append(h)
        return maps

    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(len(a))
        for fa, fb in zip(self.feature_maps(a), self.feature_maps(b)):
            fa = fa / (fa.norm(dim=1, keepdim=True) + EPS)
            fb = fb / (fb.norm(dim=1, keepdim=True) + EPS)
            total = total + (fa - fb).pow(2).sum(1).mean((1, 2))
        return total

    def logits_mse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.net(a) - self.net(b)).pow(2).mean(1)

    def train(self, mode: bool = True) -> PerceptualDistance:
        return super().train(False)  # always frozen: no BatchNorm or dropout may change with the family's mode
