"""Encoder/decoder networks for the VAE: the seed's MLP and a small convolutional pair."""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """x -> (mu, logvar); with hidden=[512, 256] and latent 20 this is seed 000's encoder."""

    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.body = nn.Sequential(*layers)
        # One linear head for [mu, logvar]: equal to the seed's two heads, one matmul instead of two.
        self.head = nn.Linear(in_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """z -> per-pixel distribution parameters, shape (N, out_channels, H, W)."""

    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, int, int]):
        super().__init__()
        self.out_shape = out_shape
        layers: list[nn.Module] = []
        in_dim = latent_dim
        for width in reversed(hidden):
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        c, h, w = out_shape
        layers.append(nn.Linear(in_dim, c * h * w))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).view(-1, *self.out_shape)


def _conv_sizes(size: int, depth: int) -> list[int]:
    """Spatial size after each stride-2 conv (kernel 4, padding 1): floor(s / 2)."""
    sizes = [size]
    for _ in range(depth):
        sizes.append(sizes[-1] // 2)
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], latent_dim: int):
        super().__init__()
        c, h, w = image_shape
        if min(_conv_sizes(min(h, w), len(channels))) < 1:
            raise ValueError(f"{len(channels)} stride-2 conv layers shrink a {h}x{w} image to nothing")
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers, nn.Flatten())
        fh, fw = _conv_sizes(h, len(channels))[-1], _conv_sizes(w, len(channels))[-1]
        self.head = nn.Linear(c * fh * fw, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder; output_padding restores odd sizes the encoder floored."""

    def __init__(self, latent_dim: int, channels: list[int], out_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = out_shape
        hs, ws = _conv_sizes(h, len(channels)), _conv_sizes(w, len(channels))
        self.start_shape = (channels[-1], hs[-1], ws[-1])
        self.fc = nn.Linear(latent_dim, channels[-1] * hs[-1] * ws[-1])
        layers: list[nn.Module] = []
        widths = [*list(reversed(channels)), c]
        for i in range(len(channels)):
            level = len(channels) - 1 - i  # target size is the encoder's input size at this level
            pad = (hs[level] - 2 * hs[level + 1], ws[level] - 2 * ws[level + 1])
            layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1, output_padding=pad))
            if i < len(channels) - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(torch.relu(self.fc(z)).view(-1, *self.start_shape))
