"""MaskGIT (Chang et al. 2022) as a prior over a tokenizer's codes: stage 2 of seed 004.

It trains on the token sequences a trained tokenizer (FlowMo) wrote (`tokenize` stage): a bidirectional
transformer (genlab.models.maskgit.nets) predicts hidden tokens under the cosine mask schedule, optionally
conditioned on the class with 10 % of labels dropped for classifier-free guidance
(genlab.processes.masked_tokens). New images come from MaskGIT's iterative parallel decoding of a token
sequence, then the tokenizer's decoder (its own sampler settings). Each position is one LFQ entropy group
of the tokenizer, a vocabulary of 2^group ids: FlowMo's own factorisation, which keeps the softmax small
(2^9 = 512 ids for FlowMo-Lo's groups instead of 2^18 per 18-bit token).

Its test number is a likelihood of the tokens: the any-order autoregressive bound in bits per token
(`masked_tokens.sequence_nll_bits`), and the same per image pixel, beside the tokenizer's raw code length.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from genlab.core.errors import ConfigError
from genlab.core.runtime import stream
from genlab.models.base import (
    DataSpec,
    Family,
    Generative,
    OptimizerSpec,
    Tokenizer,
    weighted_means,
)
from genlab.models.ema import EMA
from genlab.models.maskgit.nets import MaskedTokenTransformer
from genlab.models.maskgit.params import MaskGITConfig
from genlab.processes import masked_tokens as mt

NUM_CLASSES = 10  # the datasets' classes (digits, MNIST-style, CIFAR-10); labels beyond are an error


class MaskGIT(Family, Generative):
    name = "maskgit"
    config_class = MaskGITConfig
    walkable = False  # token sequences have no straight line between them: no latent walks
    metric_names = ("loss", "accuracy")
    curves: ClassVar = {"loss": "nats/masked token", "accuracy": "masked tokens right"}

    def __init__(self, cfg: MaskGITConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)

    def attach(self, name, model):
        """The network is sized by the tokenizer (sequence length, vocabulary), so it is built once that arrives."""
        super().attach(name, model)
        if name != "tokenizer":
            return
        if not isinstance(model, Tokenizer):
            raise ConfigError(
                f"maskgit.tokenizer = {self.cfg.tokenizer} holds a {model.name} model: it makes no tokens"
            )
        cfg = self.cfg
        self.tokenizer = model
        self.net = MaskedTokenTransformer(
            model.sequence_length,
            model.vocabulary,
            cfg.width,
            cfg.depth,
            cfg.heads,
            NUM_CLASSES if cfg.class_conditional else 0,
            cfg.dropout,
        ).to(self.device)
        self.ema = EMA(self.net, cfg.ema_decay)
        self.modules = {"net": self.net, "ema": self.ema}
        self.ema_of = {"adam": (self.ema, self.net)}

    def optimizers(self):
        return {"adam": OptimizerSpec(list(self.net.parameters()), self.cfg.lr, (self.cfg.beta1, self.cfg.beta2))}

    # --- training -------------------------------------------------------------------------------------
    def _split(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, labels or None) of a stored batch: the label is its last column (genlab.data.tokens)."""
        return stored[:, :-1], (stored[:, -1] if self.cfg.class_conditional else None)

    def _terms(self, net, stored: torch.Tensor, gen: torch.Generator, drop: float) -> tuple[torch.Tensor, dict]:
        tokens, labels = self._split(stored)
        masked, mask = mt.mask_for_training(tokens, gen, net.mask_id)
        if labels is not None and drop > 0:
            labels = mt.label_dropout(labels, drop, gen, net.null_class)
        logits = net(masked, labels)
        loss, _ = mt.masked_cross_entropy(logits, tokens, mask)
        right = (logits.argmax(-1) == tokens)[mask].float().mean()
        return loss, {"loss": loss.detach(), "accuracy": right.detach()}

    def losses(self, x, epoch, gen):
        loss, metrics = self._terms(self.net, x, gen, self.cfg.label_drop)
        return {"adam": loss}, metrics

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        return self._terms(self.ema.module, x, gen, 0.0)[1]

    # --- generation -------------------------------------------------------------------------------------
    def prior(self, n, gen):
        """Token sequences (n, L) from MaskGIT's decoding, classes drawn uniformly when conditional."""
        cfg = self.cfg
        return self._decode(n, gen, cfg.decode_steps, cfg.temperature, cfg.choice_temperature, cfg.guidance)

    def _decode(self, n, gen, steps, temperature, choice_temperature, guidance) -> torch.Tensor:
        labels = None
        if self.cfg.class_conditional:
            labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen, device=gen.device).to(self.device)
        self.ema.train(False)
        return mt.decode(
            self.ema.module.logits_fn(labels),
            n,
            self.tokenizer.sequence_length,
            steps,
            gen,
            mask_id=self.ema.module.mask_id,
            temperature=temperature,
            choice_temperature=choice_temperature,
            guidance=guidance if labels is not None else 0.0,
            device=self.device,
        )

    @torch.no_grad()
    def generate(self, z):
        """The tokenizer's images of token sequences z, its decoder's noise fixed: deterministic in z."""
        return self.tokenizer.detokenize(z, stream(0, "maskgit_detokenize", self.device))

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        z = self._decode(64, gen, self.cfg.snapshot_steps, 1.0, mt.CHOICE_TEMPERATURE, 0.0)
        return {"samples": self.generate(z)}

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        """The test tokens' likelihood under the any-order bound, per token and per pixel, beside the raw code
        length log2(vocabulary) per token; the masked-token loss and accuracy."""
        self.train(False)
        bits, results = [], []
        for stored in batches:
            tokens, labels = self._split(stored)
            net = self.ema.module
            nll = mt.sequence_nll_bits(
                net.logits_fn(labels), tokens, gen, mask_id=net.mask_id, orders=self.cfg.nll_orders
            )
            bits.append(nll.cpu())
            results.append((self.eval_step(stored, 0, gen), len(stored)))
        per_token = torch.cat(bits).mean().item()
        length, (_, h, w) = self.tokenizer.sequence_length, self.image_shape
        raw = math.log2(self.tokenizer.vocabulary)
        return {
            "bits_per_token": per_token,
            "bits_per_pixel": per_token * length / (h * w),
            "raw_bits_per_token": raw,
            "raw_bits_per_pixel": raw * length / (h * w),
            **weighted_means(results),  # the masked-token loss and accuracy
        }
