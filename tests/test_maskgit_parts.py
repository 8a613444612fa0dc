"""The MaskGIT prior's parts: the masking schedule and loss against closed forms, the parallel decoder's
bookkeeping with dummy networks, the any-order likelihood bound, and a tiny network that learns a toy token
distribution. Tiny CPU tensors, a few seconds in all."""

import itertools
import math

import pytest
import torch

from genlab.models.maskgit.nets import MaskedTokenTransformer
from genlab.processes import masked_tokens as mt


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


class FixedLogits:
    """A logits_fn that ignores its input, returns the same (L, V) logits for every sequence and records the
    `conditional` flag of every call."""

    def __init__(self, logits: torch.Tensor, unconditional: torch.Tensor | None = None):
        self.logits, self.unconditional, self.calls = logits, unconditional, []

    def __call__(self, tokens: torch.Tensor, conditional: bool) -> torch.Tensor:
        self.calls.append(conditional)
        logits = self.logits if conditional or self.unconditional is None else self.unconditional
        return logits.expand(tokens.shape[0], *logits.shape)


# --- schedule and training corruption -----------------------------------------------------------------------


def test_cosine_schedule_falls_from_one_to_zero():
    assert mt.cosine_schedule(0.0) == 1.0
    assert abs(mt.cosine_schedule(1.0)) < 1e-12
    gamma = mt.cosine_schedule(torch.linspace(0, 1, 101))
    assert gamma[0] == 1 and abs(gamma[-1]) < 1e-6
    assert (gamma.diff() < 0).all()


def test_mask_for_training_puts_mask_id_exactly_at_the_mask():
    tokens = torch.randint(0, 5, (500, 16), generator=gen(0))
    masked, mask = mt.mask_for_training(tokens, gen(1), mask_id=5)
    assert mask.dtype == torch.bool and mask.shape == tokens.shape
    assert torch.equal(masked == 5, mask)
    assert torch.equal(masked[~mask], tokens[~mask])
    assert (mask.sum(-1) >= 1).all()
    again, same_mask = mt.mask_for_training(tokens, gen(1), mask_id=5)
    assert torch.equal(again, masked) and torch.equal(same_mask, mask)


def test_mask_counts_follow_ceil_of_the_cosine_schedule():
    # count = ceil(γ(r) · L) with r ~ U(0, 1): P(count ≤ k) = P(γ(r) ≤ k / L) = 1 − (2 / π) · arccos(k / L).
    length, n = 8, 20_000
    _, mask = mt.mask_for_training(torch.zeros(n, length, dtype=torch.long), gen(2), mask_id=1)
    counts = torch.bincount(mask.sum(-1), minlength=length + 1).double() / n
    cdf = [1 - 2 / math.pi * math.acos(k / length) for k in range(length + 1)]
    expected = torch.tensor([0.0] + [cdf[k] - cdf[k - 1] for k in range(1, length + 1)], dtype=torch.float64)
    torch.testing.assert_close(counts, expected, atol=0.012, rtol=0)


def test_mean_masked_fraction_is_the_integral_of_the_schedule():
    _, mask = mt.mask_for_training(torch.zeros(8000, 256, dtype=torch.long), gen(3), mask_id=1)
    assert mask.float().mean().item() == pytest.approx(2 / math.pi, abs=0.015)


def test_masked_cross_entropy_is_the_mean_over_masked_positions_only():
    logits = torch.tensor(
        [[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 1.0]], [[1.0, 1.0, 1.0], [0.0, -2.0, 4.0], [1.0, 0.0, 2.0]]]
    )
    targets = torch.tensor([[0, 2, 2], [1, 1, 0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])

    def nll(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    a, b, c = nll([2.0, 0.0, -1.0], 0), nll([0.0, 3.0, 1.0], 2), nll([1.0, 0.0, 2.0], 0)
    mean, per_sequence = mt.masked_cross_entropy(logits, targets, mask)
    assert mean.item() == pytest.approx((a + b + c) / 3, rel=1e-6)
    torch.testing.assert_close(per_sequence, torch.tensor([(a + b) / 2, c]))

    changed = logits.clone()
    changed[~mask] = torch.tensor([-math.inf, 7.0, 0.0])  # unmasked positions, even impossible targets, don't count
    mean_changed, per_sequence_changed = mt.masked_cross_entropy(changed, targets, mask)
    assert mean_changed.item() == pytest.approx(mean.item(), rel=1e-6)
    torch.testing.assert_close(per_sequence_changed, per_sequence)


def test_label_dropout_replaces_labels_by_the_null_class_at_rate_p():
    labels = torch.randint(0, 10, (20_000,), generator=gen(4))
    assert torch.equal(mt.label_dropout(labels, 0.0, gen(5), null_id=10), labels)
    assert (mt.label_dropout(labels, 1.0, gen(5), null_id=10) == 10).all()
    dropped = mt.label_dropout(labels, 0.3, gen(5), null_id=10)
    is_null = dropped == 10
    assert is_null.float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert torch.equal(dropped[~is_null], labels[~is_null])


# --- parallel decoding --------------------------------------------------------------------------------------


def test_decode_follows_the_schedule_and_never_remasks():
    length, steps, vocabulary = 16, 8, 5
    logits_fn = FixedLogits(torch.randn(length, vocabulary, generator=gen(6)))
    tokens, history = mt.decode(logits_fn, 6, length, steps, gen(7), mask_id=vocabulary, return_history=True)
    assert history.shape == (steps, 6, length) and torch.equal(history[-1], tokens)
    assert ((tokens >= 0) & (tokens < vocabulary)).all()
    masked = history == vocabulary
    for t in range(steps):  # this schedule drops by at least one every step, so no clamp applies
        assert (masked[t].sum(-1) == math.floor(math.cos(math.pi / 2 * (t + 1) / steps) * length)).all()
    for before, after in itertools.pairwise(history):
        kept = before != vocabulary
        assert torch.equal(after[kept], before[kept])
    assert logits_fn.calls == [True] * steps


def test_decode_keeps_one_token_per_step_when_the_schedule_stalls():
    length, steps, vocabulary = 4, 12, 3
    logits_fn = FixedLogits(torch.zeros(length, vocabulary))
    tokens, history = mt.decode(logits_fn, 3, length, steps, gen(8), mask_id=vocabulary, return_history=True)
    masked_counts = (history == vocabulary).sum(-1)
    assert masked_counts[:, 0].tolist() == [3, 2, 1] + [0] * (steps - 3)
    assert (masked_counts == masked_counts[:, :1]).all()  # every sequence follows the same count
    assert logits_fn.calls == [True] * length  # nothing is left to decode after step L − 1
    assert (tokens != vocabulary).all()


def test_decode_calls_the_network_twice_per_step_with_guidance():
    conditional = torch.tensor([[0.0, 1.0, 0.8]] * 5)
    unconditional = torch.tensor([[0.0, 1.0, 0.0]] * 5)
    logits_fn = FixedLogits(conditional, unconditional)
    tokens = mt.decode(logits_fn, 4, 5, 3, gen(9), mask_id=3, guidance=1.0, temperature=0.0)
    assert logits_fn.calls == [True, False] * 3
    assert (tokens == 2).all()  # argmax of 2 · cond − uncond = [0, 1, 1.6]; the conditional argmax alone is 1
    assert (mt.decode(FixedLogits(conditional), 4, 5, 3, gen(9), mask_id=3, temperature=0.0) == 1).all()


def test_decode_is_reproducible_from_the_generator():
    logits_fn = FixedLogits(torch.zeros(10, 4))
    first = mt.decode(logits_fn, 8, 10, 4, gen(10), mask_id=4)
    assert torch.equal(first, mt.decode(logits_fn, 8, 10, 4, gen(10), mask_id=4))
    assert not torch.equal(first, mt.decode(logits_fn, 8, 10, 4, gen(11), mask_id=4))


@pytest.mark.parametrize("temperature", [0.0, 1e-4])
def test_decode_at_zero_temperature_picks_the_argmax(temperature):
    logits = torch.randn(12, 6, generator=gen(12))
    tokens = mt.decode(FixedLogits(logits), 5, 12, 4, gen(13), mask_id=6, temperature=temperature)
    assert torch.equal(tokens, logits.argmax(-1).expand(5, 12))


def test_decode_keeps_the_most_confident_token_without_choice_noise():
    logits = torch.randn(8, 4, generator=gen(14)) * 3
    _, history = mt.decode(
        FixedLogits(logits), 1, 8, 4, gen(15), mask_id=4, temperature=0.0, choice_temperature=0.0, return_history=True
    )
    # Step 0 keeps 8 − floor(γ(1/4) · 8) = 1 token: the position whose argmax is the most probable.
    kept = (history[0, 0] != 4).nonzero().flatten().tolist()
    assert kept == [logits.log_softmax(-1).max(-1).values.argmax().item()]


# --- any-order likelihood bound -----------------------------------------------------------------------------


def test_nll_bound_of_a_context_free_model_is_the_exact_iid_nll():
    length, vocabulary = 6, 5
    log_probs = torch.randn(length, vocabulary, generator=gen(16)).log_softmax(-1)
    tokens = torch.randint(0, vocabulary, (7, length), generator=gen(17))
    bits = mt.sequence_nll_bits(FixedLogits(log_probs), tokens, gen(18), mask_id=vocabulary, orders=3)
    exact = -log_probs.gather(-1, tokens.T).T.sum(-1) / (length * math.log(2))
    torch.testing.assert_close(bits, exact)


def test_nll_bound_of_the_uniform_model_is_log2_of_the_vocabulary():
    tokens = torch.randint(0, 8, (4, 5), generator=gen(19))
    bits = mt.sequence_nll_bits(FixedLogits(torch.zeros(5, 8)), tokens, gen(20), mask_id=8, orders=2)
    assert (bits >= 0).all()
    torch.testing.assert_close(bits, torch.full((4,), 3.0))


def test_nll_bound_is_the_likelihood_of_a_normalised_distribution():
    # With one fixed order (same seed, one sequence per call) p_σ sums to 1 over all V^L sequences, even for a
    # network whose conditionals are not those of any joint distribution.
    length, vocabulary = 3, 3
    net = MaskedTokenTransformer(length, vocabulary, width=16, depth=1, heads=2).eval()
    sequences = torch.tensor(list(itertools.product(range(vocabulary), repeat=length)))
    for seed in (21, 22):
        bits = torch.cat(
            [mt.sequence_nll_bits(net.logits_fn(), x[None], gen(seed), mask_id=net.mask_id) for x in sequences]
        )
        assert (2 ** (-length * bits.double())).sum().item() == pytest.approx(1.0, abs=1e-5)


# --- the network --------------------------------------------------------------------------------------------


def test_network_outputs_logits_over_the_real_vocabulary_only():
    net = MaskedTokenTransformer(6, 7, width=16, depth=2, heads=2).eval()
    assert net.mask_id == 7 and net.null_class is None
    tokens = torch.randint(0, 8, (3, 6), generator=gen(23))  # includes the [MASK] id 7
    assert net(tokens).shape == (3, 6, 7)
    with pytest.raises(ValueError, match="unconditional"):
        net(tokens, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="6 tokens"):
        net(tokens[:, :5])


def test_network_is_bidirectional_and_position_aware():
    net = MaskedTokenTransformer(5, 4, width=16, depth=2, heads=2).eval()
    tokens = torch.full((1, 5), net.mask_id)
    logits = net(tokens)
    assert not torch.allclose(logits[0, 0], logits[0, 1])  # same input token, different positions
    later_changed = tokens.clone()
    later_changed[0, 4] = 2
    assert not torch.allclose(net(later_changed)[0, 0], logits[0, 0])  # no causal mask


def test_class_conditioning_changes_the_logits_and_has_a_null_class():
    net = MaskedTokenTransformer(5, 4, width=16, depth=2, heads=2, num_classes=3).eval()
    assert net.null_class == 3
    tokens = torch.randint(0, 5, (2, 5), generator=gen(24))
    by_class = [net(tokens, torch.full((2,), c)) for c in range(4)]
    assert all(x.shape == (2, 5, 4) for x in by_class)
    assert not torch.allclose(by_class[0], by_class[1])
    assert not torch.allclose(by_class[0], by_class[3])
    torch.testing.assert_close(net(tokens), by_class[3])  # no labels = the null class
    logits_fn = net.logits_fn(torch.full((2,), 1))
    torch.testing.assert_close(logits_fn(tokens, True), by_class[1])
    torch.testing.assert_close(logits_fn(tokens, False), by_class[3])


# --- a tiny prior learns a toy distribution -----------------------------------------------------------------

# Four tokens over a vocabulary of 3: x0, x1 i.i.d. from P, x2 = x1, x3 = the class label (0 or 1).
P = torch.tensor([0.5, 0.3, 0.2])
LENGTH, VOCABULARY, CLASSES = 4, 3, 2


def toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    x0, x1 = torch.multinomial(P, 2 * n, replacement=True, generator=g).view(2, n)
    return torch.stack([x0, x1, x1, labels], dim=1), labels


@pytest.fixture(scope="module")
def toy_prior(one_thread) -> MaskedTokenTransformer:
    torch.manual_seed(0)  # the network's initialisation
    net = MaskedTokenTransformer(LENGTH, VOCABULARY, width=32, depth=2, heads=2, num_classes=CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = gen(25)
    for _ in range(400):
        tokens, labels = toy_batch(256, g)
        masked, mask = mt.mask_for_training(tokens, g, net.mask_id)
        logits = net(masked, mt.label_dropout(labels, 0.25, g, net.null_class))
        loss, _ = mt.masked_cross_entropy(logits, tokens, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_prior_learns_the_marginals_and_the_dependency(toy_prior):
    net = toy_prior
    all_masked = torch.full((1, LENGTH), net.mask_id)
    with torch.no_grad():
        unconditional = net(all_masked).softmax(-1)[0]
        torch.testing.assert_close(unconditional[0], P, atol=0.05, rtol=0)
        torch.testing.assert_close(unconditional[3], torch.tensor([0.5, 0.5, 0.0]), atol=0.05, rtol=0)
        for c in range(CLASSES):
            assert net(all_masked, torch.tensor([c])).softmax(-1)[0, 3, c] > 0.9
        x1_known = all_masked.repeat(VOCABULARY, 1)
        x1_known[:, 1] = torch.arange(VOCABULARY)
        assert (net(x1_known).softmax(-1)[:, 2].diagonal() > 0.9).all()


def test_prior_samples_reproduce_the_distribution(toy_prior):
    logits_fn = toy_prior.logits_fn(torch.ones(3000, dtype=torch.long))
    # A huge choice temperature ranks positions at random: exact any-order sampling, one token per step.
    tokens = mt.decode(logits_fn, 3000, LENGTH, LENGTH, gen(26), mask_id=toy_prior.mask_id, choice_temperature=1e4)
    assert (tokens[:, 3] == 1).float().mean() > 0.95
    assert (tokens[:, 1] == tokens[:, 2]).float().mean() > 0.9
    for position in (0, 1):
        frequencies = torch.bincount(tokens[:, position], minlength=VOCABULARY) / 3000
        torch.testing.assert_close(frequencies, P, atol=0.04, rtol=0)
    # MaskGIT's default confidence ranking sharpens the marginals but keeps the dependency.
    tokens = mt.decode(logits_fn, 3000, LENGTH, LENGTH, gen(27), mask_id=toy_prior.mask_id)
    assert (tokens[:, 1] == tokens[:, 2]).float().mean() > 0.9


def test_prior_nll_bound_approaches_the_entropy(toy_prior):
    tokens, labels = toy_batch(1000, gen(28))
    entropy = -(P * P.log2()).sum().item()  # of x0 and of x1; x2 is then free, x3 costs 1 bit unconditionally
    bits = mt.sequence_nll_bits(toy_prior.logits_fn(), tokens, gen(29), mask_id=toy_prior.mask_id, orders=2)
    assert bits.mean().item() == pytest.approx((2 * entropy + 1) / LENGTH, abs=0.02)
    bits = mt.sequence_nll_bits(toy_prior.logits_fn(labels), tokens, gen(30), mask_id=toy_prior.mask_id)
    assert bits.mean().item() == pytest.approx(2 * entropy / LENGTH, abs=0.02)
