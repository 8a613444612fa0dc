"""The FlowMo family: its stages, weight norms, learning, exact resume, checkpoint selection, figures.
(The building blocks — LFQ, the MMDiT, the rectified-flow process — are tested in test_flowmo_parts.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from genlab.config.experiment import config_from_dict
from genlab.core import checkpoint
from genlab.core.errors import ConfigError
from genlab.models.flowmo.mmdit import linear_weight_norms
from genlab.quality.reconstruction import psnr
from genlab.training.loop import lr_factor

from families import TINY_FAMILIES, Stepper, make_family, train_run, train_run_optimisers

TINY = TINY_FAMILIES["flowmo"]
RUN = {
    "model": {"family": "flowmo"},
    "flowmo": {**TINY, "pretrain_epochs": 2, "eval_every": 0},
    "train": {"epochs": 3, "batch_size": 256, "lr_schedule": "constant"},
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize(("epoch", "stage", "optimiser"), [(1, 0, "model"), (2, 0, "model"), (3, 2, "posttrain")])
def test_each_stage_steps_its_own_optimiser_and_1b_trains_only_the_decoder(epoch, stage, optimiser):
    family = make_family("flowmo", pretrain_epochs=2)
    assert family.stage(epoch) == stage
    seen = []
    step = Stepper(family)
    real = step.optimisation.update

    def update(name, loss):
        seen.append(name)
        real(name, loss)
        grads = _grads(family.encoder)
        if stage == 2:  # mode seeking: the encoder is frozen, the decoder learns through the sampled chain
            assert all(g is None for g in grads)
            assert any(g is not None and g.abs().sum() > 0 for g in _grads(family.decoder))
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)

    metrics = family.train_step(torch.rand(8, 1, 8, 8), epoch, gen(0), update)
    assert seen == [optimiser] and metrics["stage"].item() == stage


def test_freeze_encoder_after_moves_training_to_the_decoder_optimiser():
    family = make_family("flowmo", freeze_encoder_after=1, pretrain_epochs=5)
    assert [family.stage(e) for e in (1, 2, 5, 6)] == [0, 1, 1, 2]
    before = [p.clone() for p in family.encoder.parameters()]
    Stepper(family)(torch.rand(8, 1, 8, 8), gen(1), epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(before, family.encoder.parameters()))


def test_train_epochs_null_is_the_family_s_default_length():
    flowmo = config_from_dict({"model": {"family": "flowmo"}})
    assert (flowmo.train.epochs, flowmo.flowmo.pretrain_epochs) == (65, 60)  # both stages: 60 of 1A, 5 of 1B
    assert config_from_dict({}).train.epochs == 100  # the VAE (and GAN, DDPM, MaskGIT)
    assert config_from_dict({"model": {"family": "flowmo"}, "train": {"epochs": 7}}).train.epochs == 7


def test_each_stage_s_optimiser_runs_its_schedule_over_that_stage_s_epochs(digits):
    assert [make_family("flowmo", pretrain_epochs=2).schedule_window(o, 4) for o in ("model", "posttrain")] == [
        (1, 2),
        (3, 4),
    ]
    frozen = make_family("flowmo", freeze_encoder_after=1, pretrain_epochs=3)
    assert [frozen.schedule_window(o, 5) for o in ("model", "decoder", "posttrain")] == [(1, 1), (2, 3), (4, 5)]
    assert make_family("flowmo", decoder="regression", pretrain_epochs=2).schedule_window("model", 4) == (1, 4)

    cfg = config_from_dict({**RUN, "train": {**RUN["train"], "epochs": 4, "lr_schedule": "cosine"}})
    seen = train_run_optimisers(cfg, digits)  # in the family's order: model, decoder, posttrain
    steps = math.ceil(len(digits.train.images) / cfg.train.batch_size) * 2  # each stage's: 2 epochs
    model, _, posttrain = (opt.param_groups[0]["lr"] for opt in seen)
    assert posttrain == pytest.approx(cfg.family.posttrain_lr * lr_factor("cosine", steps - 1, steps))
    assert model == 0  # 1A's schedule ended with 1A


def test_block_linears_keep_their_initial_norms_after_every_step():
    family = make_family("flowmo")
    initial = {part: linear_weight_norms(getattr(family, part).blocks) for part in ("encoder", "decoder")}
    step = Stepper(family)
    for i in range(3):
        step(torch.rand(8, 1, 8, 8), gen(i))
    for part, norms in initial.items():
        now = linear_weight_norms(getattr(family, part).blocks)
        assert all(torch.allclose(now[k], v, rtol=1e-5) for k, v in norms.items()), part
    # ... while the weights themselves moved (the rescaling keeps directions, not values).
    assert not torch.equal(
        family.decoder.blocks[0].image.qkv.weight, make_family("flowmo").decoder.blocks[0].image.qkv.weight
    )


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"flowmo\.group = 4 must divide flowmo\.bits = 6"):
        config_from_dict({"flowmo": {"group": 4}})
    with pytest.raises(ConfigError, match=r"flowmo\.decoder_width = 20 over flowmo\.decoder_heads = 4: expected"):
        config_from_dict({"flowmo": {"decoder_width": 20}})
    with pytest.raises(ConfigError, match=r"flowmo\.patch = 3 does not divide the 8x8 images"):
        make_family("flowmo", patch=3)


def test_tokens_round_trip_and_the_test_metrics_count_bits():
    family = make_family("flowmo", tokens=4, bits=6, group=3)
    x = torch.rand(10, 1, 8, 8)
    tokens = family.tokenize(x)
    assert tokens.shape == (10, 8) and family.vocabulary == 8 and tokens.max() < 8
    from genlab.models.flowmo import lfq

    back = lfq.code_indices(lfq.indices_to_codes(tokens.view(10, 4, 2), 3), 3).flatten(1)
    assert torch.equal(back, tokens)
    metrics = family.test_metrics([x], gen(2))
    assert metrics["bits_per_pixel"] == pytest.approx(4 * 6 / 64)
    assert 1 <= metrics["token_perplexity"] <= 8 and 0 < metrics["token_used_fraction"] <= 1


def test_a_tiny_model_learns_digits_and_beats_the_mean_image(digits):
    """400 steps on digits: the flow loss falls, and the in-training reconstructions (2 Euler steps) beat
    predicting the mean image by > 0.5 dB (measured: 12.75 vs 11.49 dB)."""
    family = make_family(
        "flowmo",
        encoder_width=32,
        encoder_heads=2,
        decoder_width=32,
        decoder_heads=2,
        encoder_depth=2,
        decoder_depth=2,
        tokens=8,
        lr=5e-3,
        ema_decay=0.9,
    )
    train = digits.to_unit(digits.train.images)
    test = digits.to_unit(digits.test.images[:128])
    step, g = Stepper(family), gen(3)
    flows = [step(train[torch.randint(0, len(train), (64,), generator=g)], g)["flow"].item() for _ in range(400)]
    assert sum(flows[-40:]) < 0.5 * sum(flows[:40])
    family.train(False)
    recon = family.quick_reconstruct(test, gen(4))
    mean_image = train.mean(0, keepdim=True).expand_as(test)
    assert psnr(recon, test).mean() > psnr(mean_image, test).mean() + 0.5


def test_training_resumes_bit_for_bit_across_the_1a_to_1b_boundary(digits, tmp_path):
    full = train_run(config_from_dict(RUN), digits)
    assert [row["train_stage"] for row in full] == [0, 0, 2]
    ckpt = tmp_path / "train.pt"
    train_run(config_from_dict({**RUN, "train": {**RUN["train"], "epochs": 2}}), digits, ckpt)
    state = checkpoint.load(ckpt)
    assert set(state["optimizers"]) == {"model", "decoder", "posttrain"}
    resumed = train_run(config_from_dict({**RUN, "train": {**RUN["train"], "resume": True}}), digits, ckpt, state)
    assert resumed == full


def test_post_training_keeps_the_epoch_with_the_best_validation_rfid_scoring_every_1b_epoch(digits):
    cfg = config_from_dict(
        {
            **RUN,
            "flowmo": {**RUN["flowmo"], "pretrain_epochs": 2, "eval_every": 10},
            "train": {**RUN["train"], "epochs": 4},
        }
    )
    scores = iter([3.0, 4.0])  # 1A epochs 1-2 are not due (eval_every 10); 1B's epoch 3 (best) and 4 are
    history = train_run(cfg, digits, scorer=lambda family: {"domain_rfid": next(scores)})
    assert ["val_domain_rfid" in row for row in history] == [False, False, True, True]
    assert [row["selected"] for row in history] == [0, 0, 1, 0]
    # 1B's objective on val: from the last 1A epoch (its baseline) on
    assert ["val_sample_distance" in row for row in history] == [False, True, True, True]


def test_regression_baselines_decode_in_one_pass_and_b2_trains_its_critic():
    b0 = make_family("flowmo", decoder="regression", perceptual_weight=0.0, pretrain_epochs=1)
    assert b0.stage(5) == 0 and "critic" not in b0.modules  # no sampler: no stage 1B
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(b0.reconstruct(x, gen(1)), b0.reconstruct(x, gen(2)), rtol=0, atol=0)
    b2 = make_family("flowmo", decoder="regression", adversarial_weight=0.1)
    critic, decoder = ([p.clone() for p in m.parameters()] for m in (b2.critic, b2.decoder))
    seen = []
    step = Stepper(b2)
    real = step.optimisation.update
    b2.train_step(torch.rand(8, 1, 8, 8), 1, gen(3), lambda name, loss: (seen.append(name), real(name, loss)))
    assert seen == ["critic", "model"]
    assert any(not torch.equal(a, b) for a, b in zip(critic, b2.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(decoder, b2.decoder.parameters()))
