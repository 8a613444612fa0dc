"""The MaskGIT prior family: its token data, determinism, exact resume and its likelihood numbers.
(The masked-token process and the network are tested in test_maskgit_parts.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from genlab.config.sections import TrainConfig
from genlab.core import checkpoint, paths
from genlab.core.errors import DataError
from genlab.core.inference import sampling
from genlab.data.prepared import FORMAT_VERSION
from genlab.data.tokens import load_tokens, write_tokens
from genlab.training.loop import NullTracker, fit
from genlab.training.sources import Source, token_source

from families import CPU, Stepper, batch, make_family

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return torch.randint(0, 8, (n, 8), generator=g), torch.randint(0, 10, (n,), generator=g)


def _write(folder, md5="a" * 32):
    splits = {"train": _tokens(64, 0), "val": _tokens(16, 1), "test": _tokens(16, 2)}
    manifest = {"format_version": FORMAT_VERSION, "tokenizer_md5": md5, "sequence_length": 8, "vocabulary": 8}
    write_tokens(folder, {k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()}, manifest)
    return splits


def test_token_data_round_trips_and_refuses_another_tokenizer_or_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "TOKENS_DIR", tmp_path / "tokens")
    splits = _write(paths.TOKENS_DIR)
    data = load_tokens(paths.TOKENS_DIR)
    assert torch.equal(data.tokens["val"], splits["val"][0]) and torch.equal(
        data.stored("test")[:, -1], splits["test"][1]
    )
    source = token_source("a" * 32)
    assert source.train.shape == (64, 9) and torch.equal(source.to_input(source.val, gen(0)), source.val)
    with pytest.raises(DataError, match="made by a tokenizer of md5 a+, not by the one attached"):
        token_source("b" * 32)
    manifest = json.loads((paths.TOKENS_DIR / "manifest.json").read_text())
    (paths.TOKENS_DIR / "manifest.json").write_text(json.dumps({**manifest, "vocabulary": 4}))
    with pytest.raises(DataError, match="does not match its manifest"):
        load_tokens(paths.TOKENS_DIR)


def _fit(family, ckpt=None, state=None, epochs=3):
    stored = {
        k: torch.cat([t, y[:, None]], 1) for k, (t, y) in {"train": _tokens(128, 0), "val": _tokens(32, 1)}.items()
    }
    source = Source(stored["train"], stored["val"], stored["val"], lambda s, g: s)
    train = TrainConfig(epochs=epochs, batch_size=32, lr_schedule="constant")
    return fit(family, source, train, 0, key="k", checkpoint_path=ckpt, tracker=NullTracker(), resume_state=state)


def test_training_is_deterministic_and_resumes_bit_for_bit(tmp_path):
    full = _fit(make_family("maskgit"))
    assert full == _fit(make_family("maskgit"))
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(full[0])
    ckpt = tmp_path / "train.pt"
    _fit(make_family("maskgit"), ckpt, epochs=2)
    assert _fit(make_family("maskgit"), ckpt, checkpoint.load(ckpt)) == full


def test_test_metrics_report_the_likelihood_per_token_and_pixel_beside_the_raw_code():
    family = make_family("maskgit")
    Stepper(family)(batch(family, 16), gen(0))
    metrics = family.test_metrics([batch(family, 8, 1)], gen(1))
    assert metrics["raw_bits_per_token"] == pytest.approx(math.log2(8))
    assert metrics["bits_per_pixel"] == pytest.approx(metrics["bits_per_token"] * 8 / 64)
    assert metrics["raw_bits_per_pixel"] == pytest.approx(3 * 8 / 64) and metrics["bits_per_token"] > 0


def test_guided_prior_draws_token_sequences_the_tokenizer_decodes():
    family = make_family("maskgit", guidance=2.0, decode_steps=4)
    family.train(False)
    tokens = family.prior(6, gen(2))
    assert tokens.shape == (6, 8) and tokens.dtype == torch.int64 and int(tokens.max()) < 8
    assert family.generate(tokens).shape == (6, 1, 8, 8) and not family.walkable


def test_sampling_context_decodes_tokens_and_images_as_before(monkeypatch):
    """MaskGIT's decoding and its tokenizer's (FlowMo's) under the stages' inference context: fp32 gives the
    same images bit for bit; bf16 (the CPU pretended to have AVX512-BF16) stays in [0, 1], close to them."""
    family = make_family("maskgit", guidance=2.0, decode_steps=4)
    family.train(False)
    before = family.sample(5, gen(3))
    with sampling("fp32", CPU):
        after = family.sample(5, gen(3))
        reconstructed = family.tokenizer.reconstruct(before, gen(4))
    assert torch.equal(after, before) and after.is_inference()
    assert torch.equal(reconstructed, family.tokenizer.reconstruct(before, gen(4)))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    with sampling("bf16", CPU):
        bf16 = family.tokenizer.reconstruct(before, gen(4))
    assert bf16.dtype == torch.float32 and bf16.min() >= 0 and bf16.max() <= 1
    assert (bf16 - reconstructed).abs().mean() < 0.05
