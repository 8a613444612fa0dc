"""FlowMo's building blocks: LFQ against brute force, the rectified-flow process against closed forms, and the
MMDiT encoder/decoder's shapes, invariances and conditioning. Tiny CPU tensors, a few seconds in all."""

import itertools
import math

import pytest
import torch

from genlab.models.flowmo import lfq
from genlab.models.flowmo.mmdit import (
    FlowMoDecoder,
    FlowMoEncoder,
    JointBlock,
    apply_rope,
    joint_positions,
    linear_weight_norms,
    patchify,
    rescale_to_initial_norms,
    rope_angles,
    rope_axis_dims,
    sinusoidal_embedding,
    unpatchify,
)
from genlab.processes import rectified_flow as rf


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


# --- LFQ ----------------------------------------------------------------------------------------------------


def test_quantize_forward_is_sign_with_zero_to_plus_one():
    c = torch.tensor([[-2.0, -1e-8, 0.0, 1e-8, 3.0, -0.5]])
    assert torch.equal(lfq.quantize(c), torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, -1.0]]))


def test_straight_through_gradient_is_the_upstream_gradient():
    c = torch.randn(2, 3, 6, generator=gen(0), requires_grad=True)
    upstream = torch.randn(2, 3, 6, generator=gen(1))
    (lfq.quantize(c) * upstream).sum().backward()
    assert torch.equal(c.grad, upstream)


def test_commitment_moves_only_the_encoder_output():
    c = torch.randn(4, 6, generator=gen(2), requires_grad=True)
    lfq.commitment_loss(c).backward()
    # d/dc mean((c − sign c)²) with the sign detached.
    torch.testing.assert_close(c.grad, 2 * (c.detach() - torch.sign(c.detach())) / c.numel())


def brute_force_entropy_loss(c_hat: torch.Tensor, group: int, temperature: float) -> float:
    """Enumerate the 2^g codes of every group with plain loops and pool all distributions, as FlowMo does."""
    codes = list(itertools.product([-1.0, 1.0], repeat=group))
    rows = c_hat.reshape(-1, c_hat.shape[-1]).tolist()
    dists = []
    for row in rows:
        for start in range(0, len(row), group):
            piece = row[start : start + group]
            logits = [2 * sum(a * b for a, b in zip(piece, code)) / temperature for code in codes]
            top = max(logits)
            weights = [math.exp(v - top) for v in logits]
            dists.append([w / sum(weights) for w in weights])

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    mean = [sum(d[j] for d in dists) / len(dists) for j in range(len(codes))]
    return sum(entropy(d) for d in dists) / len(dists) - entropy(mean)


def test_entropy_loss_equals_brute_force():
    c = 0.3 * torch.randn(2, 3, 6, generator=gen(3))  # 2 samples, 3 tokens, 6 bits = 2 groups of 3
    got = lfq.entropy_loss(c, group=3)
    want = brute_force_entropy_loss(c, 3, lfq.TEMPERATURE)
    assert got.loss.item() == pytest.approx(want, abs=1e-5)
    assert (got.sample_entropy - got.codebook_entropy).item() == pytest.approx(want, abs=1e-5)


def test_entropy_loss_prefers_confident_diverse_codes():
    group = 3
    confident = 2.0 * lfq.group_codes(group)[None]  # one token per code, far from the decision boundaries
    uniform = torch.zeros(1, 2**group, group)  # every logit equal
    low, flat = lfq.entropy_loss(confident, group).loss, lfq.entropy_loss(uniform, group).loss
    assert flat.item() == pytest.approx(0.0, abs=1e-6)  # log 8 − log 8
    assert low < flat
    assert low.item() >= -math.log(2**group) - 1e-6
    assert low.item() == pytest.approx(-math.log(2**group), abs=1e-3)


def test_code_indices_round_trip_and_bit_order():
    group = 4
    indices = torch.arange(2**group).reshape(4, 2, 2)  # (..., groups)
    bits = lfq.indices_to_codes(indices, group)
    assert bits.shape == (4, 2, 2 * group)
    assert torch.equal(lfq.code_indices(bits, group), indices)
    # Least-significant bit first: (+, −, +) = 1 + 4.
    assert lfq.code_indices(torch.tensor([1.0, -1.0, 1.0]), 3).item() == 5


def test_codebook_usage():
    uniform = lfq.codebook_usage(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), num_codes=16)
    assert uniform["perplexity"] == pytest.approx(4.0)
    assert uniform["used_fraction"] == pytest.approx(0.25)
    skewed = lfq.codebook_usage(torch.tensor([5, 5, 5, 7]), num_codes=8)
    assert skewed["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    with pytest.raises(ValueError):
        lfq.codebook_usage(torch.tensor([9]), num_codes=8)


def test_bits_per_pixel():
    assert lfq.bits_per_pixel(256, 18, 256, 256) == pytest.approx(0.0703125)  # FlowMo-Lo
    assert round(lfq.bits_per_pixel(256, 56, 256, 256), 3) == 0.219  # FlowMo-Hi
    assert lfq.bits_per_pixel(4, 6, 8, 8) == pytest.approx(24 / 64)


# --- rectified flow -----------------------------------------------------------------------------------------


def test_interpolation_target_and_one_step_prediction_are_consistent():
    x, z = torch.randn(3, 1, 4, 4, generator=gen(4)), torch.randn(3, 1, 4, 4, generator=gen(5))
    t = torch.tensor([0.0, 0.3, 1.0])
    x_t = rf.interpolate(x, z, t)
    torch.testing.assert_close(x_t[0], x[0])
    torch.testing.assert_close(x_t[2], z[2])
    torch.testing.assert_close(rf.one_step_prediction(x_t, t, rf.velocity_target(x, z)), x)


def test_t_sampler_is_a_thick_tailed_logit_normal():
    t, from_uniform = rf.sample_t_with_branch(100_000, gen(6))
    assert from_uniform.float().mean().item() == pytest.approx(0.1, abs=0.005)  # 5 standard errors
    assert ((t > 0) & (t < 1)).all()
    logit = torch.logit(t[~from_uniform].double())
    assert logit.mean().item() == pytest.approx(0.0, abs=0.02)
    assert logit.std().item() == pytest.approx(1.0, abs=0.02)
    assert t[from_uniform].mean().item() == pytest.approx(0.5, abs=0.01)


def test_t_sampler_is_reproducible():
    assert torch.equal(rf.sample_t(64, gen(7)), rf.sample_t(64, gen(7)))
    assert not torch.equal(rf.sample_t(64, gen(7)), rf.sample_t(64, gen(8)))


def test_schedule_endpoints_monotone_and_shift():
    for rho in (1.0, 4.0):
        grid = rf.schedule(25, rho)
        assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
        assert (grid[1:] < grid[:-1]).all()
    torch.testing.assert_close(rf.schedule(25, 1.0), torch.linspace(1, 0, 26, dtype=torch.float64))
    shifted = rf.schedule(25, 4.0)
    steps = shifted[:-1] - shifted[1:]
    # ρ = 4 takes its largest step from t = 1 and crowds the grid near t = 0 (low noise), as the paper intends.
    assert (steps[1:] < steps[:-1]).all()
    assert (shifted < 0.5).sum().item() > 0.75 * 26


def test_sigma_to_t_of_the_guidance_interval():
    assert round(rf.sigma_to_t(0.17), 4) == 0.1453
    assert round(rf.sigma_to_t(1.02), 4) == 0.5050
    assert (rf.sigma_to_t(0.17), rf.sigma_to_t(1.02)) == rf.GUIDANCE_INTERVAL


def gaussian_velocity(mu: float, s: float):
    """The exact rectified-flow velocity E[z − x | x_t] for data x ~ N(mu, s²) per dimension."""

    def velocity(x_t: torch.Tensor, t: torch.Tensor, conditional: bool) -> torch.Tensor:
        t = t.reshape(-1, *[1] * (x_t.ndim - 1))
        centred = x_t - (1 - t) * mu
        var = (1 - t) ** 2 * s**2 + t**2
        return t * centred / var - (mu + (1 - t) * s**2 * centred / var)

    return velocity


def test_euler_with_the_exact_velocity_reaches_the_data():
    mu, s = 0.5, 0.3
    z = torch.randn(4, 1, 2, 2, generator=gen(9), dtype=torch.float64)
    # The ODE transports N(0, 1) onto N(mu, s²) monotonically, i.e. z ↦ mu + s · z; Euler's error is O(1/steps).
    errors = [
        (rf.euler_sample(gaussian_velocity(mu, s), z, steps=n, rho=1.0, guidance=1.0) - (mu + s * z)).abs().max()
        for n in (100, 1000)
    ]
    assert errors[1] < 1e-3 and errors[1] < errors[0] / 5
    traj = rf.euler_sample(gaussian_velocity(mu, s), z, steps=50, rho=4.0, guidance=1.0, return_trajectory=True)
    assert traj.shape == (51, *z.shape)
    assert torch.equal(traj[0], z)
    torch.testing.assert_close(traj[-1], mu + s * z, atol=5e-2, rtol=0)  # few, shifted steps: coarser


class CountingVelocity:
    """Different conditional and unconditional fields; records every call's flag and time."""

    def __init__(self):
        self.calls: list[tuple[bool, float]] = []

    def __call__(self, x_t, t, conditional):
        self.calls.append((conditional, t[0].item()))
        return 0.5 * x_t + 1.0 if conditional else -0.2 * x_t

    def unconditional(self) -> list[float]:
        return [t for cond, t in self.calls if not cond]


def test_guidance_one_equals_no_guidance_with_one_call_per_step():
    z = torch.randn(2, 1, 2, 2, generator=gen(10))
    counter = CountingVelocity()
    guided = rf.euler_sample(counter, z, steps=10, guidance=1.0, interval=None)
    assert [cond for cond, _ in counter.calls] == [True] * 10
    plain = rf.euler_sample(lambda x, t, c: 0.5 * x + 1.0, z, steps=10, guidance=1.5, interval=None)
    torch.testing.assert_close(guided, plain)


def test_guidance_formula_and_interval():
    z = torch.randn(2, 1, 2, 2, generator=gen(11))
    one = rf.euler_sample(CountingVelocity(), z, steps=1, guidance=1.5, interval=None)
    v_c, v_u = 0.5 * z + 1.0, -0.2 * z
    torch.testing.assert_close(one, z - (v_u + 1.5 * (v_c - v_u)))

    counter = CountingVelocity()
    rf.euler_sample(counter, z, steps=25, rho=4.0, guidance=1.5)
    lo, hi = rf.GUIDANCE_INTERVAL
    inside = [t for t in rf.schedule(25, 4.0)[:-1].tolist() if lo <= t <= hi]
    assert 0 < len(inside) < 25
    assert counter.unconditional() == pytest.approx(inside)
    assert len(counter.calls) == 25 + len(inside)


def test_random_time_grid():
    grid = rf.random_time_grid(5, 8, gen(12))
    assert grid.shape == (5, 9)
    assert (grid[:, 0] == 1).all() and (grid[:, -1] == 0).all()
    assert (grid[:, 1:] <= grid[:, :-1]).all()
    assert not torch.equal(grid[0], grid[1])  # a different schedule per sample
    assert torch.equal(grid, rf.random_time_grid(5, 8, gen(12)))


# --- MMDiT, encoder, decoder --------------------------------------------------------------------------------


def tiny(cls, channels=1, size=8, patch=2, tokens=4, bits=4, depth=1, seed=0):
    torch.manual_seed(seed)
    return cls(
        channels=channels,
        image_size=(size, size),
        patch=patch,
        tokens=tokens,
        bits=bits,
        width=16,
        depth=depth,
        heads=2,
    )


def perturb_gates(model: torch.nn.Module, seed: int = 0) -> None:
    """Fresh adaLN-Zero blocks are the identity, so the decoder ignores the code until the gates move."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0.0, 0.3, generator=g)


@pytest.mark.parametrize("channels,size,patch", [(1, 8, 2), (1, 28, 4), (3, 32, 4)])
def test_encoder_and_decoder_shapes(channels, size, patch):
    images = torch.randn(2, channels, size, size, generator=gen(13))
    c_hat = tiny(FlowMoEncoder, channels, size, patch, tokens=3, bits=6)(images)
    assert c_hat.shape == (2, 3, 6)
    v = tiny(FlowMoDecoder, channels, size, patch, tokens=3, bits=6)(images, lfq.quantize(c_hat), torch.rand(2))
    assert v.shape == images.shape


def test_encoder_tokens_differ_only_through_their_positions():
    c_hat = tiny(FlowMoEncoder)(torch.randn(1, 1, 8, 8, generator=gen(14)))
    assert not torch.allclose(c_hat[0, 0], c_hat[0, 1])


def test_patchify_round_trip_and_layout():
    images = torch.randn(2, 3, 8, 12, generator=gen(15))
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(unpatchify(patches, 4, 8, 12), images)
    # Patch 1 is row 0, column 1; within it channels vary fastest.
    assert torch.equal(patches[0, 1].reshape(4, 4, 3).permute(2, 0, 1), images[0, :, :4, 4:8])
    with pytest.raises(ValueError):
        patchify(images, 5)


def test_fresh_conditioned_block_is_the_identity():
    torch.manual_seed(0)
    block = JointBlock(16, heads=2, conditioned=True)
    img, lat, cond = torch.randn(2, 9, 16), torch.randn(2, 3, 16), torch.randn(2, 16)
    angles = rope_angles(joint_positions(3, 3, 3), rope_axis_dims(8))
    out_img, out_lat = block(img, lat, cond, angles)
    assert torch.equal(out_img, img) and torch.equal(out_lat, lat)


def test_decoder_output_depends_on_code_and_time():
    decoder = tiny(FlowMoDecoder)
    perturb_gates(decoder)
    x_t = torch.randn(2, 1, 8, 8, generator=gen(16))
    code = lfq.quantize(torch.randn(2, 4, 4, generator=gen(17)))
    t = torch.tensor([0.3, 0.8])
    v = decoder(x_t, code, t)
    assert not torch.allclose(v, decoder(x_t, -code, t))
    assert not torch.allclose(v, decoder(x_t, code, t.flip(0)))
    dropped = decoder(x_t, code, t, keep=torch.tensor([False, True]))
    torch.testing.assert_close(dropped[0], decoder(x_t, None, t)[0])  # a dropped code is the null code
    torch.testing.assert_close(dropped[1], v[1])


def test_rope_scores_depend_only_on_relative_position():
    dims = rope_axis_dims(16)
    q, k = torch.randn(16, generator=gen(18)), torch.randn(16, generator=gen(19))

    def score(m, n):
        angles = rope_angles(torch.tensor([m, n], dtype=torch.float32), dims)
        rotated = apply_rope(torch.stack([q, k]), angles)
        return (rotated[0] @ rotated[1]).item()

    base = score([0.0, 2.0, 5.0], [3.0, 1.0, 4.0])
    assert score([7.0, 4.0, 6.0], [10.0, 3.0, 5.0]) == pytest.approx(base, abs=1e-4)  # both shifted by (7, 2, 1)
    assert score([0.0, 2.0, 5.0], [3.0, 2.0, 4.0]) != pytest.approx(base, abs=1e-3)  # another offset


def test_sinusoidal_embedding():
    emb = sinusoidal_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(math.cos(500.0), abs=1e-4)  # t scaled by 1000, top frequency 1


def test_rescale_restores_norms_and_keeps_directions():
    decoder = tiny(FlowMoDecoder, depth=2)
    norms = linear_weight_norms(decoder.blocks)
    assert any(name.endswith("qkv") for name in norms) and any("modulation" in name for name in norms)
    assert any(name.endswith("mlp.0") for name in norms) and any(name.endswith("proj") for name in norms)
    g = gen(20)
    with torch.no_grad():
        for p in decoder.blocks.parameters():
            p.mul_(2.5).add_(0.01 * torch.randn(p.shape, generator=g))
    directions = {name: m.weight / m.weight.norm() for name, m in decoder.blocks.named_modules() if name in norms}
    rms_scale = decoder.blocks[0].image.q_norm.weight.clone()
    rescale_to_initial_norms(decoder.blocks, norms)
    for name, m in decoder.blocks.named_modules():
        if name in norms:
            assert m.weight.norm().item() == pytest.approx(norms[name].item(), rel=1e-5)
            torch.testing.assert_close(m.weight / m.weight.norm(), directions[name])
    assert torch.equal(decoder.blocks[0].image.q_norm.weight, rms_scale)  # only Linear weights are touched


# --- the mode-seeking sampling chain ------------------------------------------------------------------------


def chain_gradients(checkpoint: bool):
    decoder = tiny(FlowMoDecoder, depth=2)
    perturb_gates(decoder)
    code = lfq.quantize(torch.randn(2, 4, 4, generator=gen(21)))
    z = torch.randn(2, 1, 8, 8, generator=gen(22))
    x0 = rf.sample_with_grad(lambda x, t, c: decoder(x, code, t), z, k=8, gen=gen(23), checkpoint=checkpoint)
    x0.square().mean().backward()
    return x0.detach(), {name: p.grad for name, p in decoder.named_parameters()}


def test_checkpointed_chain_matches_plain_chain():
    x_plain, plain = chain_gradients(checkpoint=False)
    x_ckpt, ckpt = chain_gradients(checkpoint=True)
    assert torch.equal(x_plain, x_ckpt)  # same generator, same chain
    # The last block's latent queries and updates feed no output, so only they stay without a gradient.
    unused = ("net.blocks.1.latent.q_norm", "net.blocks.1.latent.proj", "net.blocks.1.latent.mlp")
    for name, grad in plain.items():
        if name.startswith(unused):
            continue
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-7)
