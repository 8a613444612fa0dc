"""Lookup-free quantisation (LFQ; Yu et al. 2024, "Language Model Beats Diffusion") as FlowMo uses it.

Each of the `bits` channels of a latent token is binarised to ±1, so a token is one of 2^bits codes and no
codebook is ever looked up. Two auxiliary losses keep the encoder's pre-quantisation output ĉ useful:

- an entropy loss on groups of g bits (2^g codes per group): each ĉ-group gets a soft assignment over its
  2^g codes; making every assignment confident (low per-sample entropy) while spreading the batch over all
  codes (high entropy of the mean assignment) pushes ĉ towards distinct, well-used codes;
- a commitment loss MSE(ĉ, sign(ĉ)) that keeps ĉ near the corners of the hypercube.

Groups are contiguous runs of g channels. FlowMo's code (flowmo/models.py `_quantize`) interleaves them
instead (group j holds channels j, j + bits/g, ...); the two differ by a fixed permutation of the encoder's
learned output channels, so the choice does not change what can be learned.

Bit i of a group has weight 2^i in its code index (least-significant bit first), as in FlowMo's LFQ.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from genlab.models.flowmo.params import COMMITMENT_WEIGHT, ENTROPY_WEIGHT  # FlowMo's loss weights (base.yaml)

TEMPERATURE = 0.1  # FlowMo's (flowmo/lookup_free_quantize.py)


def _sign(c_hat: torch.Tensor) -> torch.Tensor:
    """±1 with 0 ↦ +1 (FlowMo maps 0 to −1 via `x > 0`; ĉ = 0 exactly has probability zero either way)."""
    return torch.where(c_hat >= 0, 1.0, -1.0).to(c_hat.dtype)


def quantize(c_hat: torch.Tensor) -> torch.Tensor:
    """sign(ĉ) in the forward pass, identity gradient in the backward pass (straight-through estimator).

    Written as q + (ĉ − ĉ.detach()) rather than ĉ + (q − ĉ).detach(): the added term is exactly 0, so the
    forward value is exactly ±1 instead of ±1 up to a rounding error.
    """
    return _sign(c_hat).detach() + (c_hat - c_hat.detach())


def _groups(c_hat: torch.Tensor, group: int) -> torch.Tensor:
    """(..., bits) → (..., bits / group, group)."""
    bits = c_hat.shape[-1]
    if group < 1 or bits % group:
        raise ValueError(f"the last dimension ({bits} bits) must split into groups of {group} bits")
    return c_hat.reshape(*c_hat.shape[:-1], bits // group, group)


def group_codes(group: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All 2^group codes as ±1 rows, (2^group, group); row j holds the bits of j, least-significant first."""
    index = torch.arange(2**group, device=device)
    weights = 2 ** torch.arange(group, device=device)
    return ((index[:, None] & weights) != 0).to(dtype) * 2 - 1


class EntropyLoss(NamedTuple):
    """The entropy loss and its two parts (nats), for logging."""

    loss: torch.Tensor
    sample_entropy: torch.Tensor  # mean entropy of the per-(sample, token, group) code distributions
    codebook_entropy: torch.Tensor  # entropy of their mean


def entropy_loss(c_hat: torch.Tensor, group: int, temperature: float = TEMPERATURE) -> EntropyLoss:
    """LFQ entropy loss of ĉ (..., bits) on groups of `group` bits: mean sample entropy − codebook entropy.

    Each group's logits over its 2^g codes are 2⟨ĉ_group, code⟩, as in FlowMo's LFQ; this equals
    −‖ĉ_group − code‖² + ‖ĉ_group‖² + g, i.e. the negative squared distance up to a per-group constant that
    the softmax (at `temperature`, 0.1) ignores. As in FlowMo, the "batch" distribution is the mean over every
    leading position and every group together (samples, tokens and groups are pooled into one distribution
    over the 2^g codes), so the loss lies in [−g·log 2, g·log 2]. Entropies are exact (FlowMo adds 1e-5 inside
    the log of the mean distribution, a difference of at most ~2^g · 1e-5 nats).
    """
    codes = group_codes(group, c_hat.device, c_hat.dtype)
    logits = 2 * _groups(c_hat, group) @ codes.T / temperature
    log_probs = F.log_softmax(logits.float(), dim=-1).reshape(-1, 2**group)
    probs = log_probs.exp()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)
    # Clamping only changes 0·log 0 terms: their value stays 0 and their gradient finite.
    codebook_entropy = -(mean_probs * mean_probs.clamp_min(torch.finfo(mean_probs.dtype).tiny).log()).sum()
    return EntropyLoss(sample_entropy - codebook_entropy, sample_entropy, codebook_entropy)


def commitment_loss(c_hat: torch.Tensor) -> torch.Tensor:
    """MSE(ĉ, sign(ĉ)) with the sign detached, so only the encoder output moves (as in FlowMo's LFQ)."""
    return F.mse_loss(c_hat, _sign(c_hat).detach())


def quantizer_loss(
    c_hat: torch.Tensor,
    group: int,
    entropy_weight: float = ENTROPY_WEIGHT,
    commitment_weight: float = COMMITMENT_WEIGHT,
) -> torch.Tensor:
    """The weighted LFQ auxiliary loss FlowMo adds to its training objective."""
    return entropy_weight * entropy_loss(c_hat, group).loss + commitment_weight * commitment_loss(c_hat)


def code_indices(q: torch.Tensor, group: int) -> torch.Tensor:
    """Integer code of each group of ±1 bits: (..., bits) → (..., bits / group), int64, bit i weighs 2^i."""
    weights = 2 ** torch.arange(group, device=q.device)
    return ((_groups(q, group) > 0).long() * weights).sum(-1)


def indices_to_codes(indices: torch.Tensor, group: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `code_indices`: (..., groups) integer codes → (..., groups · group) ±1 bits."""
    weights = 2 ** torch.arange(group, device=indices.device)
    bits = ((indices[..., None] & weights) != 0).to(dtype) * 2 - 1
    return bits.flatten(-2)


def codebook_usage(indices: torch.Tensor, num_codes: int) -> dict[str, float]:
    """How evenly `indices` cover `num_codes` codes.

    perplexity: exp of the entropy of the empirical code distribution (= m when m codes are used equally);
    used_fraction: the share of the `num_codes` codes that occur at least once.
    """
    counts = torch.bincount(indices.flatten().long(), minlength=num_codes).double()
    if counts.numel() > num_codes:
        raise ValueError(f"indices reach {counts.numel() - 1}, beyond {num_codes} codes")
    p = counts[counts > 0] / counts.sum()
    return {
        "perplexity": math.exp(-(p * p.log()).sum().item()),
        "used_fraction": (counts > 0).sum().item() / num_codes,
    }


def bits_per_pixel(tokens: int, bits_per_token: int, height: int, width: int) -> float:
    """Bits of the code per image pixel: tokens · bits / (H · W).

    >>> round(bits_per_pixel(256, 18, 256, 256), 4)  # FlowMo-Lo: 256 tokens of 18 bits
    0.0703
    >>> round(bits_per_pixel(256, 56, 256, 256), 3)  # FlowMo-Hi: 256 tokens of 56 bits
    0.219
    """
    return tokens * bits_per_token / (height * width)
