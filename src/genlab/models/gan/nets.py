"""DCGAN generator and discriminator (Radford et al. 2016) sized from the image shape.

Both networks work at resolutions image_size / 2^k: the image is halved while its side stays even and
at least 4, so 8x8 digits use 4x4 -> 8x8, 28x28 MNIST 7x7 -> 14x14 -> 28x28 and 32x32 CIFAR-10
4x4 -> 8x8 -> 16x16 -> 32x32. Channels double at each halving, starting from `width` at full size.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


def halvings(size: int) -> int:
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        n += 1
    return n


def _levels(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    _, h, w = image_shape
    n = min(halvings(h), halvings(w))
    return n, h >> n, w >> n


def init_dcgan(module: nn.Module) -> None:
    """N(0, 0.02) weights, BatchNorm scales N(1, 0.02), zero biases, as in DCGAN."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z -> image in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int]):
        super().__init__()
        c = image_shape[0]
        n, bh, bw = _levels(image_shape)
        chans = [width * 2 ** (n - i) for i in range(n + 1)]  # base resolution first
        self.base = (chans[0], bh, bw)
        self.project = nn.Sequential(nn.Linear(latent_dim, chans[0] * bh * bw, bias=False))
        layers: list[nn.Module] = [nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)]
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(chans[-1], c, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        init_dcgan(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, *self.base))


class Discriminator(nn.Module):
    """image in [-1, 1] -> one raw output per image (a logit or a critic value, depending on the loss).

    BatchNorm (DCGAN) is used only when `batch_norm`; WGAN-GP's per-image penalty and spectral
    normalisation both call for a discriminator without it.
    """

    def __init__(self, width: int, image_shape: tuple[int, int, int], batch_norm: bool, spectral_norm: bool):
        super().__init__()
        c = image_shape[0]
        n, bh, bw = _levels(image_shape)
        chans = [width * 2**i for i in range(n + 1)]
        layers: list[nn.Module] = [nn.Conv2d(c, chans[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in itertools.pairwise(chans):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(chans[-1] * bh * bw, 1)
        init_dcgan(self)
        if spectral_norm:  # after the init: the parametrisation then starts from the DCGAN weights
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    _spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)
