"""The MMDiT-style transformer of FlowMo's encoder and decoder (Sargent et al. 2025; Esser et al. 2024).

Two token streams, image patches and latent tokens, keep their own weights but meet in one joint attention
over [latents; patches] in every block. Mechanisms follow FlowMo's flowmo/models.py (itself Flux's
double-stream block):

- pre-norm LayerNorm without affine, modulated by adaLN: a conditioning vector c (the time embedding) gives
  per-stream shift, scale and gate for attention and MLP, x + gate · f((1 + scale) · norm(x) + shift); the gate
  rows of the modulation Linear start at zero (adaLN-Zero on the gates only), so a fresh block is the identity;
- QK-norm: RMSNorm with a learned scale over each head's q and k, shared by the heads of a stream;
- rotary position embedding on three axes: a latent token i sits at (i, i, i), the patch in grid row r,
  column c at (0, r, c); each head's channels are split between the axes (64 → 8 + 28 + 28 in FlowMo);
- MLP ratio 4 with tanh-approximated GELU; biases on every Linear;
- the encoder has no conditioning vector: shift = scale = 0 and gate = 1 (FlowMo passes no timestep).

Deviations: attention uses the standard 1/√d scale (FlowMo's μP uses 8/d, the same at d = 64), readouts are
plain Linears (no μP), and the final layer applies LayerNorm once before its adaLN modulation (FlowMo's
LastLayer normalises again after modulating, which partly undoes the modulation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MLP_RATIO = 4
TIME_FREQUENCIES = 256  # width of the sinusoidal time features, as in FlowMo
ROPE_THETA = 10_000.0
NORM_EPS = 1e-6


# --- patches ------------------------------------------------------------------------------------------------


def _check_divisible(height: int, width: int, patch: int) -> None:
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch}")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) → (N, H/p · W/p, p · p · C), patches in row-major order, channels last within a patch."""
    n, c, h, w = images.shape
    _check_divisible(h, w, patch)
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`: (N, H/p · W/p, p · p · C) → (N, C, H, W)."""
    _check_divisible(height, width, patch)
    n, length, dim = patches.shape
    gh, gw = height // patch, width // patch
    if length != gh * gw or dim % (patch * patch):
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not tile a {height}x{width} image")
    c = dim // (patch * patch)
    x = patches.reshape(n, gh, gw, patch, patch, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, height, width)


# --- time and position encodings ----------------------------------------------------------------------------


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10_000.0
) -> torch.Tensor:
    """(N,) times in [0, 1] → (N, dim) [cos | sin] features of scale · t (FlowMo's `timestep_embedding`).

    The 1000× scale puts t on the integer-timestep range the frequencies 1 ... 1/max_period were designed for.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """t → sinusoidal features → Linear-SiLU-Linear → conditioning vector of the model width."""

    def __init__(self, width: int, frequencies: int = TIME_FREQUENCIES):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.frequencies)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels between the three RoPE axes in FlowMo's proportions 2 : 7 : 7 (64 → 8, 28, 28)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    spatial = 2 * (7 * head_dim // 32)  # even, so the rotation pairs stay within one axis
    return head_dim - 2 * spatial, spatial, spatial


def joint_positions(num_tokens: int, grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor:
    """RoPE coordinates of [latents; patches], (T + gh · gw, 3): latent i at (i, i, i), patch (r, c) at (0, r, c)."""
    tokens = torch.arange(num_tokens, device=device, dtype=torch.float32)[:, None].expand(-1, 3)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, device=device, dtype=torch.float32),
        torch.arange(grid_w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    patches = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return torch.cat([tokens, patches])


def rope_angles(positions: torch.Tensor, axis_dims: Sequence[int], theta: float = ROPE_THETA) -> torch.Tensor:
    """(L, axes) positions → (L, Σ axis_dims / 2) rotation angles; axis a rotates its pairs at θ^(−2j/d_a)."""
    parts = []
    for axis, dim in enumerate(axis_dims):
        omega = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
        parts.append(positions[:, axis, None].float() * omega)
    return torch.cat(parts, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j + 1) of x (..., L, D) by angles (L, D/2); computed in float32.

    ⟨rope(q, m), rope(k, n)⟩ depends on the positions only through m − n, which is what makes it relative.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = angles.cos(), angles.sin()
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# --- the transformer ----------------------------------------------------------------------------------------


class _Stream(nn.Module):
    """One stream's weights inside a joint block: adaLN modulation, attention projections, QK-norm, MLP."""

    def __init__(self, width: int, heads: int, conditioned: bool):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(width // heads, eps=NORM_EPS)
        self.k_norm = nn.RMSNorm(width // heads, eps=NORM_EPS)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width), nn.GELU(approximate="tanh"), nn.Linear(MLP_RATIO * width, width)
        )
        self.modulation = nn.Linear(width, 6 * width) if conditioned else None
        if self.modulation is not None:
            # Chunks: shift, scale, gate (attention), shift, scale, gate (MLP). Zero gates make the block start
            # as the identity, so a deep stack trains stably from the first step.
            with torch.no_grad():
                for gate in (2, 5):
                    self.modulation.weight[gate * width : (gate + 1) * width] = 0
                    self.modulation.bias[gate * width : (gate + 1) * width] = 0

    def modulations(self, cond: torch.Tensor | None) -> Sequence[torch.Tensor | float]:
        """(shift, scale, gate) for attention then MLP, each (N, 1, W); no modulation without `cond`."""
        if self.modulation is None:
            return 0.0, 0.0, 1.0, 0.0, 0.0, 1.0
        return self.modulation(F.silu(cond))[:, None].chunk(6, dim=-1)

    def qkv_heads(
        self, x: torch.Tensor, shift: torch.Tensor | float, scale: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, L, W) → q, k, v of shape (N, heads, L, W / heads), q and k RMS-normalised."""
        h = (1 + scale) * self.norm1(x) + shift
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor, mods: Sequence[torch.Tensor | float]) -> torch.Tensor:
        """Gated residual updates from the attention output (N, L, W) and the MLP."""
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.proj(attn)
        return x + gate2 * self.mlp((1 + scale2) * self.norm2(x) + shift2)


class JointBlock(nn.Module):
    """One MMDiT block: per-stream weights, one attention over [latents; patches]."""

    def __init__(self, width: int, heads: int, conditioned: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.image = _Stream(width, heads, conditioned)
        self.latent = _Stream(width, heads, conditioned)

    def forward(
        self, img: torch.Tensor, lat: torch.Tensor, cond: torch.Tensor | None, angles: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """img (N, P, W), lat (N, T, W), cond (N, W) or None, angles (T + P, head_dim / 2) → updated (img, lat)."""
        img_mods, lat_mods = self.image.modulations(cond), self.latent.modulations(cond)
        qi, ki, vi = self.image.qkv_heads(img, *img_mods[:2])
        ql, kl, vl = self.latent.qkv_heads(lat, *lat_mods[:2])
        q = apply_rope(torch.cat([ql, qi], dim=2), angles)
        k = apply_rope(torch.cat([kl, ki], dim=2), angles)
        out = F.scaled_dot_product_attention(q, k, torch.cat([vl, vi], dim=2))
        out = out.transpose(1, 2).flatten(2)  # (N, T + P, W)
        lat_out, img_out = out[:, : lat.shape[1]], out[:, lat.shape[1] :]
        return self.image.finish(img, img_out, img_mods), self.latent.finish(lat, lat_out, lat_mods)


class FinalLayer(nn.Module):
    """LayerNorm (adaLN-modulated when conditioned) and a Linear readout."""

    def __init__(self, width: int, out_dim: int, conditioned: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.modulation = nn.Linear(width, 2 * width) if conditioned else None
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(x)
        if self.modulation is not None:
            shift, scale = self.modulation(F.silu(cond))[:, None].chunk(2, dim=-1)
            h = (1 + scale) * h + shift
        return self.linear(h)


class MMDiT(nn.Module):
    """Patches + latent tokens (+ optional time conditioning) → a stack of joint blocks → requested readouts.

    Args:
        patch: patch size p; image_size (H, W) must be divisible by it.
        channels: image channels C.
        num_tokens, token_dim: the latent sequence (T, token_dim) fed to the latent stream.
        width, depth, heads: transformer width, number of blocks, attention heads.
        image_out: read the patch stream out as an image of C channels.
        token_out_dim: read the latent stream out with this many features per token (None: no readout).
        conditioned: use a time embedding through adaLN (decoder); False gives an unmodulated stack (encoder).
    """

    def __init__(
        self,
        *,
        patch: int,
        channels: int,
        image_size: tuple[int, int],
        num_tokens: int,
        token_dim: int,
        width: int,
        depth: int,
        heads: int,
        image_out: bool = True,
        token_out_dim: int | None = None,
        conditioned: bool = True,
    ):
        super().__init__()
        _check_divisible(*image_size, patch)
        self.patch, self.image_size, self.num_tokens = patch, tuple(image_size), num_tokens
        self.axis_dims = rope_axis_dims(width // heads)
        self.image_in = nn.Linear(patch * patch * channels, width)
        self.token_in = nn.Linear(token_dim, width)
        self.time_embedding = TimeEmbedding(width) if conditioned else None
        self.blocks = nn.ModuleList(JointBlock(width, heads, conditioned) for _ in range(depth))
        self.image_out = FinalLayer(width, patch * patch * channels, conditioned) if image_out else None
        self.token_out = FinalLayer(width, token_out_dim, conditioned) if token_out_dim is not None else None

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """images (N, C, H, W), tokens (N, T, token_dim), t (N,) → (image readout, token readout), None if absent."""
        h, w = images.shape[-2:]
        if (h, w) != self.image_size or tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"expected {self.image_size} images and {self.num_tokens} tokens, got {(h, w)} and {tokens.shape[1]}"
            )
        if (t is None) != (self.time_embedding is None):
            raise ValueError("pass t exactly when the model is conditioned")
        cond = None if self.time_embedding is None else self.time_embedding(t)
        img = self.image_in(patchify(images, self.patch))
        lat = self.token_in(tokens)
        positions = joint_positions(self.num_tokens, h // self.patch, w // self.patch, images.device)
        angles = rope_angles(positions, self.axis_dims)
        for block in self.blocks:
            img, lat = block(img, lat, cond, angles)
        image = None if self.image_out is None else unpatchify(self.image_out(img, cond), self.patch, h, w)
        token = None if self.token_out is None else self.token_out(lat, cond)
        return image, token


# --- FlowMo's encoder and decoder ---------------------------------------------------------------------------


class _FlowMoNet(nn.Module):
    """What FlowMo's encoder and decoder share: an MMDiT over the image's patches and `tokens` latent tokens
    (sizes: channels, image_size, patch, tokens, bits, width, depth, heads). The decoder is conditioned on
    time, reads the code (+ a presence channel) and writes the image; the encoder writes the tokens."""

    def __init__(
        self,
        *,
        channels: int,
        image_size: tuple[int, int],
        patch: int,
        tokens: int,
        bits: int,
        width: int,
        depth: int,
        heads: int,
        decoder: bool,
    ):
        super().__init__()
        self.bits = bits
        self.net = MMDiT(
            patch=patch,
            channels=channels,
            image_size=image_size,
            num_tokens=tokens,
            token_dim=bits + 1 if decoder else bits,
            width=width,
            depth=depth,
            heads=heads,
            image_out=decoder,
            token_out_dim=None if decoder else bits,
            conditioned=decoder,
        )

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, whose Linear weights FlowMo keeps at their initial norms."""
        return self.net.blocks


class FlowMoEncoder(_FlowMoNet):
    """Image (N, C, H, W) → pre-quantisation code ĉ (N, tokens, bits).

    As in FlowMo, the latent stream starts from all-zero inputs: after `token_in` every latent is the same
    learned constant (its bias), and only the rotary positions tell them apart.
    """

    def __init__(self, **sizes: Any):
        super().__init__(decoder=False, **sizes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        zeros = images.new_zeros(images.shape[0], self.net.num_tokens, self.bits)
        return self.net(images, zeros)[1]


class FlowMoDecoder(_FlowMoNet):
    """(x_t, code, t) → velocity z − x, same shape as x_t.

    The latent stream reads the quantised code with one extra "code present" channel: 1 where the code is
    given, and the whole token (code and channel) zeroed where it is dropped, which is FlowMo's null code for
    classifier-free guidance.
    """

    def __init__(self, **sizes: Any):
        super().__init__(decoder=True, **sizes)

    def forward(
        self, x_t: torch.Tensor, code: torch.Tensor | None, t: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """code (N, tokens, bits) or None (unconditional); keep (N,) bool drops the code where False."""
        n = x_t.shape[0]
        if code is None:
            tokens = x_t.new_zeros(n, self.net.num_tokens, self.bits + 1)
        else:
            tokens = torch.cat([code.to(x_t.dtype), code.new_ones(*code.shape[:-1], 1, dtype=x_t.dtype)], dim=-1)
            if keep is not None:
                tokens = tokens * keep.to(tokens.dtype)[:, None, None]
        return self.net(x_t, tokens, t.to(x_t.dtype))[0]


# --- weight-norm control ------------------------------------------------------------------------------------


def linear_weight_norms(module: nn.Module) -> dict[str, torch.Tensor]:
    """Frobenius norm of every nn.Linear weight in `module`, by qualified name (detached copies).

    FlowMo fixes every Linear of its transformer blocks (attention, MLP and modulation; not the input,
    time-embedding or readout layers), so pass `encoder.blocks` / `decoder.blocks`.
    """
    return {
        name: m.weight.detach().float().norm().clone() for name, m in module.named_modules() if isinstance(m, nn.Linear)
    }


@torch.no_grad()
def rescale_to_initial_norms(module: nn.Module, initial_norms: dict[str, torch.Tensor]) -> None:
    """Scale each nn.Linear weight of `module` back to its norm in `initial_norms`, in place, direction unchanged.

    Called after every optimiser step (FlowMo, after EDM2's forced weight normalisation): with Adam the weight
    norms would otherwise grow without bound and the effective learning rate would decay.
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            norm = m.weight.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
            m.weight.mul_((initial_norms[name].to(norm.device) / norm).to(m.weight.dtype))
