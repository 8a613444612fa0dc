"""A small U-Net that predicts ε (or v) from a noisy image x_t and its timestep t (Ho et al. 2020).

Resolution levels have widths `channels × channel_mults[i]` and `res_blocks` residual blocks each;
between levels the image is halved only while its side is even, so nothing is padded or cropped:
8x8 → 4x4, 32x32 → 16 → 8, and 28x28 → 14 → 7, where 7x7 stays the lowest resolution (28x28 inputs
are not padded to 32x32; further levels at 7x7 only change the width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide `channels` (any width works)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps (Vaswani et al.), shape (N, dim), dim even."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the projected time embedding, twice, with a residual path."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels with a residual path (used at the lowest resolution only,
    where H·W is small enough for its quadratic cost)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (N, HW, C) each
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """ε/v-predictor: output has the input's shape (N, C, H, W); t is an integer tensor (N,)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: int,
        channel_mults: list[int],
        res_blocks: int,
        attention: bool,
    ):
        super().__init__()
        c_img, height, width = image_shape
        self.emb_dim = 2 * max(1, channels // 2)
        t_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(self.emb_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(c_img, channels, 3, padding=1)

        # Encoder: record each output's width, as the decoder concatenates them in reverse order.
        self.down = nn.ModuleList()
        skips, ch, halved = [channels], channels, []
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                self.down.append(ResBlock(ch, channels * mult, t_dim))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                halve = height % 2 == 0 and width % 2 == 0
                self.down.append(Downsample(ch) if halve else nn.Identity())
                halved.append(halve)
                height, width = (height // 2, width // 2) if halve else (height, width)
                skips.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, t_dim), SelfAttention(ch) if attention else nn.Identity(), ResBlock(ch, ch, t_dim)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), channels * mult, t_dim))
                ch = channels * mult
            if level > 0:
                self.up.append(Upsample(ch) if halved[level - 1] else nn.Identity())

        self.head = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, c_img, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), temb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(h)
