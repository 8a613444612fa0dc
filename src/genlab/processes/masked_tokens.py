"""The masked-token process of MaskGIT (Chang et al. 2022), as a prior over discrete token sequences.

Training hides a random share γ(r) of each sequence behind a [MASK] id and asks a bidirectional network for
the hidden tokens; sampling starts from an all-[MASK] sequence and fills it in a few parallel steps, keeping
the most confident guesses and masking the rest again. Mechanisms follow google-research/maskgit
(libml/mask_schedule.py, libml/parallel_decode.py) and TiTok's generator (bytedance/1d-tokenizer,
modeling/maskgit.py) for class conditioning and guidance.

Nothing here knows about a network: it enters as `logits_fn(tokens, conditional) -> logits`, tokens (N, L)
int64 with the [MASK] id where hidden, logits (N, L, V) over the real vocabulary, and `conditional` False
asking for the null-class logits used by classifier-free guidance (an unconditional model ignores it).
Every random draw takes an explicit `torch.Generator` and is made on the generator's device, then moved to
the tokens' device, so a CPU generator drives a GPU run reproducibly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor, bool], torch.Tensor]

CHOICE_TEMPERATURE = 4.5  # Gumbel scale of the confidence ranking at step 0 (MaskGIT, TiTok)


def cosine_schedule(r: float | torch.Tensor) -> float | torch.Tensor:
    """γ(r) = cos(π r / 2): the fraction of tokens masked at progress r ∈ [0, 1] (1 at r = 0, 0 at r = 1)."""
    if isinstance(r, torch.Tensor):
        return torch.cos(math.pi / 2 * r)
    return math.cos(math.pi / 2 * r)


def scheduled_masked_count(step: int, steps: int, length: int) -> int:
    """floor(γ((step + 1) / steps) · L): how many of L positions the schedule leaves masked after `step`."""
    return math.floor(cosine_schedule((step + 1) / steps) * length)


def _uniform(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _gumbel(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    u = _uniform(shape, gen, device).clamp_min(torch.finfo(torch.float32).tiny)  # rand may return exactly 0
    return -torch.log(-torch.log(u))


def _random_ranks(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Each row a uniformly random permutation of 0..L−1: the rank of every position in a random order."""
    return _uniform(shape, gen, device).argsort(-1).argsort(-1)


def mask_for_training(tokens: torch.Tensor, gen: torch.Generator, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's training corruption of (N, L) tokens: the masked sequences and the boolean mask, both (N, L).

    Per sample r ~ U(0, 1) and ceil(γ(r) · L) positions chosen uniformly are replaced by `mask_id`. The ceiling
    masks at least one position (a sequence with nothing hidden teaches nothing) and lets r ≈ 0 hide all of
    them, which is where sampling starts.
    """
    n, length = tokens.shape
    r = _uniform((n,), gen, tokens.device)
    count = torch.ceil(cosine_schedule(r) * length).long().clamp(1, length)
    mask = _random_ranks((n, length), gen, tokens.device) < count[:, None]
    return tokens.masked_fill(mask, mask_id), mask


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy in nats over the masked positions only: (mean over all masked tokens of the batch, (N,)).

    The scalar weighs every masked token equally (MaskGIT's loss), so heavily masked sequences count more; the
    per-sequence value is the mean over that sequence's masked tokens (0 where none is masked).
    """
    # Float32 log-softmax: bf16 logits would lose the small probabilities the loss is made of.
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    nll = torch.where(mask, nll, torch.zeros_like(nll))  # where, not a product: a -inf logit must not give NaN
    counts = mask.sum(-1)
    per_sequence = nll.sum(-1) / counts.clamp_min(1)
    return nll.sum() / counts.sum().clamp_min(1), per_sequence


def label_dropout(labels: torch.Tensor, p: float, gen: torch.Generator, null_id: int) -> torch.Tensor:
    """Labels with each replaced by `null_id` with probability p, so one network also learns the unconditional
    distribution that classifier-free guidance extrapolates away from."""
    return labels.masked_fill(_uniform(tuple(labels.shape), gen, labels.device) < p, null_id)


def guided_logits(logits_fn: LogitsFn, tokens: torch.Tensor, guidance: float) -> torch.Tensor:
    """(1 + w) · conditional − w · unconditional logits in float32 (TiTok's form); w = 0 makes a single call."""
    conditional = logits_fn(tokens, True).float()
    if guidance == 0:
        return conditional
    return (1 + guidance) * conditional - guidance * logits_fn(tokens, False).float()


def _sample(log_probs: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """One token per position from softmax(log_probs / temperature) by Gumbel-max; temperature 0 is argmax."""
    if temperature == 0:
        return log_probs.argmax(-1)
    return (log_probs / temperature + _gumbel(tuple(log_probs.shape), gen, log_probs.device)).argmax(-1)


@torch.no_grad()
def decode(
    logits_fn: LogitsFn,
    n: int,
    length: int,
    steps: int,
    gen: torch.Generator,
    *,
    mask_id: int,
    temperature: float = 1.0,
    choice_temperature: float = CHOICE_TEMPERATURE,
    guidance: float = 0.0,
    device: torch.device | str | None = None,
    return_history: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's iterative parallel decoding of n sequences of `length` tokens in `steps` steps.

    From an all-[MASK] sequence, step t (0-based) samples a token at every masked position from the (guided)
    logits at `temperature`, scores each by its log-probability under the untempered logits plus Gumbel noise
    of scale choice_temperature · (1 − (t + 1) / steps), and masks the lowest-scoring ones again so that
    min(floor(γ((t + 1) / steps) · L), masked before − 1) stay masked: at least one token is kept per step,
    none after the last. Kept tokens are never re-masked or changed. The noise scale anneals to 0 as MaskGIT's
    does: early choices, made on little context, are randomised, late ones follow the model's confidence.
    Confidence ranking favours likely tokens, so samples are sharper than the model's distribution; a huge
    choice_temperature ranks at random, which with one token per step is exact any-order sampling.

    With steps > L every token is kept before the last step; the remaining steps call no network.
    Returns the tokens (n, length) and, with `return_history`, the sequences after every step
    (steps, n, length), still-masked positions holding `mask_id`.
    """
    device = gen.device if device is None else torch.device(device)
    tokens = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    masked_count, history = length, []
    for step in range(steps):
        if masked_count:
            log_probs = guided_logits(logits_fn, tokens, guidance).log_softmax(-1)
            sampled = _sample(log_probs, temperature, gen)
            masked = tokens == mask_id
            proposal = torch.where(masked, sampled, tokens)
            keep_masked = min(scheduled_masked_count(step, steps, length), masked_count - 1)
            if keep_masked:
                confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1)
                scale = choice_temperature * (1 - (step + 1) / steps)
                confidence = confidence + scale * _gumbel(tuple(confidence.shape), gen, device)
                confidence = confidence.masked_fill(~masked, math.inf)  # kept tokens are never candidates
                least_confident = confidence.topk(keep_masked, dim=-1, largest=False).indices
                proposal = proposal.scatter(-1, least_confident, mask_id)
            tokens, masked_count = proposal, keep_masked
        history.append(tokens)
    return (tokens, torch.stack(history)) if return_history else tokens


@torch.no_grad()
def sequence_nll_bits(
    logits_fn: LogitsFn,
    tokens: torch.Tensor,
    gen: torch.Generator,
    *,
    mask_id: int,
    orders: int = 1,
    conditional: bool = True,
) -> torch.Tensor:
    """Negative log2-likelihood per token of each of the (N, L) `tokens` under the any-order autoregressive
    reading of the model: (N,) bits per token.

    For a random order σ (one per sequence and per order, from `gen`) the model defines the valid distribution
    p_σ(x) = Π_i p(x_σ(i) | x_σ(<i), rest masked): MaskGIT decoding with one token per step in the order σ.
    −log2 p_σ(x) / L is that sampler's exact NLL; averaged over `orders` random orders it estimates
    E_σ[−log2 p_σ(x)] / L, an upper bound (Jensen) on the NLL of the mixture "draw σ uniformly, then decode in
    order σ". It says nothing exact about the confidence-ordered parallel sampler of `decode`, whose
    likelihood is intractable. Cost: L network calls, each on a batch of orders · N sequences.
    """
    n, length = tokens.shape
    targets = tokens.repeat(orders, 1)  # row k · N + j: sequence j under order k
    ranks = _random_ranks(tuple(targets.shape), gen, tokens.device)
    nll = torch.zeros(orders * n, device=tokens.device)
    for i in range(length):
        visible = targets.masked_fill(ranks >= i, mask_id)
        log_probs = logits_fn(visible, conditional).float().log_softmax(-1)
        target_log_probs = log_probs.gather(-1, targets[..., None]).squeeze(-1)
        nll -= torch.where(ranks == i, target_log_probs, torch.zeros_like(target_log_probs)).sum(-1)
    return nll.view(orders, n).mean(0) / (length * math.log(2))
