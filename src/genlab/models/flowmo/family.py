"""FlowMo (seed 004; Sargent et al. 2025): a mode-seeking diffusion autoencoder with discrete tokens.

A transformer encoder maps an image to `tokens` latent tokens of `bits` channels, binarised by lookup-free
quantisation (genlab.models.flowmo.lfq); a rectified-flow transformer decoder (genlab.models.flowmo.mmdit) turns noise
into the image, conditioned on those tokens. Training has two stages, selected by epoch:

- 1A, epochs 1 .. pretrain_epochs: flow matching on x_t = (1 − t) x + t z with target v = z − x
  (genlab.processes.rectified_flow), a perceptual loss on the one-step estimate x̂ = x_t − t v̂, LFQ's
  entropy and commitment losses; 10 % of codes dropped for classifier-free guidance; the encoder frozen
  after `freeze_encoder_after` epochs (a fresh Adam over the decoder, as FlowMo's code rebuilds its optimiser);
- 1B, the epochs after: mode-seeking post-training with the encoder frozen — a k-step Euler sample from
  noise, differentiated end to end, replaces x̂ in the perceptual term (its logits MSE at weight
  `sample_weight`); its own Adam at `posttrain_lr`. `train.lr_schedule` runs over each stage's epochs for
  that stage's optimiser (`schedule_window`): cosine takes 1A's lr to 0 at the end of 1A and 1B's at the
  end of the run. The kept weights are those of the 1B epoch with the best validation rFID (scored after
  every 1B epoch unless `eval_every` = 0), since the paper stops early against reward hacking.

Each Linear of the transformer blocks is rescaled to its initial norm after every step; evaluation and
sampling use an EMA of the weights. `decoder: regression` gives the baselines of the paper's comparison with
the same encoder, quantiser and parameter count: the decoder network maps (zeros, code, t = 1) to −x̂ in one
pass, trained on MSE (B0), + the perceptual loss (B1), + a hinge GAN loss against the GAN family's
discriminator (B2, `adversarial_weight` > 0). Images are in [−1, 1] inside, [0, 1] at the interface.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import ConfigError
from genlab.core.runtime import stream
from genlab.core.visualise import plot_token_usage, save_labelled_rows
from genlab.models.base import DataSpec, ExtraFigures, Family, OptimizerSpec, Reconstructor, Tokenizer
from genlab.models.ema import EMA
from genlab.models.flowmo import lfq
from genlab.models.flowmo.mmdit import FlowMoDecoder, FlowMoEncoder, linear_weight_norms, rescale_to_initial_norms
from genlab.models.flowmo.params import FlowMoConfig
from genlab.models.flowmo.perceptual import PerceptualDistance
from genlab.models.gan.losses import discriminator_loss, generator_loss
from genlab.models.gan.nets import Discriminator
from genlab.processes import rectified_flow as rf

NOISE_DRAWS = 6  # decodings of one image in samples/noise_draws.png


class FlowMo(Family, Reconstructor, Tokenizer, ExtraFigures):
    name = "flowmo"
    config_class = FlowMoConfig
    metric_names = ("loss", "flow", "perceptual", "entropy", "commitment", "perplexity", "used_fraction", "stage")
    eval_only_metrics = ("sample_distance",)  # val psnr comes with val rFID (genlab.evaluation.scoring.fid_monitor)
    curves = {
        "flow": "MSE of v",
        "perceptual": "distance",
        "entropy": "nats",
        "perplexity": "codes",
        "sample_distance": "logits MSE (val)",
        "psnr": "dB (val)",
        "domain_rfid": "lower is better",
    }

    def __init__(self, cfg: FlowMoConfig, data: DataSpec, device: torch.device):
        super().__init__(cfg, data, device)
        c, h, w = self.image_shape
        if h % cfg.patch or w % cfg.patch:
            raise ConfigError(
                f"flowmo.patch = {cfg.patch} does not divide the {h}x{w} images: choose a divisor of {math.gcd(h, w)}"
            )
        sizes = dict(channels=c, image_size=(h, w), patch=cfg.patch, tokens=cfg.tokens, bits=cfg.bits)
        self.encoder = FlowMoEncoder(
            width=cfg.encoder_width, depth=cfg.encoder_depth, heads=cfg.encoder_heads, **sizes
        ).to(device)
        self.decoder = FlowMoDecoder(
            width=cfg.decoder_width, depth=cfg.decoder_depth, heads=cfg.decoder_heads, **sizes
        ).to(device)
        self.net = nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})
        self.ema = EMA(self.net, cfg.ema_decay)
        self.modules = {"net": self.net, "ema": self.ema}
        self.ema_of = {name: (self.ema, self.net) for name in ("model", "decoder", "posttrain")}
        if cfg.decoder == "regression" and cfg.adversarial_weight > 0:
            self.critic = Discriminator(32, self.image_shape, batch_norm=False, spectral_norm=True).to(device)
            self.modules["critic"] = self.critic
        # Fixed at initialisation: after every step each block Linear is scaled back to these norms.
        self.initial_norms = {
            part: linear_weight_norms(m.blocks) for part, m in (("encoder", self.encoder), ("decoder", self.decoder))
        }
        self.sequence_length = cfg.tokens * (cfg.bits // cfg.group)
        self.vocabulary = 2**cfg.group
        self.sigmas = None if cfg.guidance_sigma is None else tuple(rf.sigma_to_t(s) for s in cfg.guidance_sigma)

    # --- training -------------------------------------------------------------------------------------
    def optimizers(self):
        betas, cfg = (self.cfg.beta1, self.cfg.beta2), self.cfg
        decoder = list(self.decoder.parameters())
        specs = {
            "model": OptimizerSpec(list(self.encoder.parameters()) + decoder, cfg.lr, betas),
            "decoder": OptimizerSpec(decoder, cfg.lr, betas),
            "posttrain": OptimizerSpec(decoder, cfg.posttrain_lr, betas),
        }
        if "critic" in self.modules:
            specs["critic"] = OptimizerSpec(list(self.critic.parameters()), cfg.lr, (0.5, 0.999))
        return specs

    def stage(self, epoch: int) -> int:
        """0: stage 1A; 1: 1A with the encoder frozen; 2: 1B (post-training, flow decoder only)."""
        cfg = self.cfg
        if epoch > cfg.pretrain_epochs and cfg.decoder == "flow":
            return 2
        return int(cfg.freeze_encoder_after is not None and epoch > cfg.freeze_encoder_after)

    def schedule_window(self, optimiser, epochs):
        """The epochs whose stage steps `optimiser`: 1A's lr decays over 1A, 1B's over 1B (a run-wide schedule
        left 1B at most ~2 % of posttrain_lr). The critic (baseline B2) steps in every epoch."""
        stage = {"model": 0, "decoder": 1, "posttrain": 2}.get(optimiser)
        used = [e for e in range(1, epochs + 1) if stage is None or self.stage(e) == stage]
        return (used[0], used[-1]) if used else (1, epochs)

    def attach(self, name, model):
        super().attach(name, model)
        if name == "perceptual":
            self.perceptual = PerceptualDistance(model)

    def _code(self, encoder: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ĉ, q): the encoder output and its binarisation with a straight-through gradient."""
        c_hat = encoder(x0)
        return c_hat, lfq.quantize(c_hat)

    def _terms(
        self, net: nn.ModuleDict, x: torch.Tensor, gen: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """(loss, metrics, x̂ of a regression decoder or None) of batch x in [0, 1] with network `net`
        (the live one or its EMA)."""
        cfg, x0, stage = self.cfg, 2 * x - 1, self.stage(epoch)
        frozen = stage > 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            c_hat, q = self._code(net["encoder"], x0)
        entropy = lfq.entropy_loss(c_hat, cfg.group)
        commitment = lfq.commitment_loss(c_hat)
        x_hat = None
        if cfg.decoder == "regression":
            x_hat = self._regress(net["decoder"], q)
            flow = F.mse_loss(x_hat, x0)
            perceptual = self.perceptual.lpips((x_hat + 1) / 2, x).mean()
        else:
            t = rf.sample_t(len(x0), gen, cfg.uniform_share, device=x0.device)
            z = torch.randn(x0.shape, generator=gen, device=x0.device)
            keep = torch.rand(len(x0), generator=gen, device=x0.device) >= cfg.code_drop
            x_t = rf.interpolate(x0, z, t)
            v = net["decoder"](x_t, q, t, keep)
            flow = F.mse_loss(v, rf.velocity_target(x0, z))
            # The one-step estimate's distance: 1A's perceptual loss, a diagnostic in 1B (the same curve throughout).
            with torch.set_grad_enabled(torch.is_grad_enabled() and stage < 2):
                perceptual = self.perceptual.lpips((rf.one_step_prediction(x_t, t, v) + 1) / 2, x).mean()
        objective, weight = perceptual, cfg.perceptual_weight
        if stage == 2:  # mode seeking: the distance of what the decoder actually samples replaces it
            objective = self.sample_distance(net["decoder"], q, x, gen, cfg.checkpoint_chain)
            weight = cfg.sample_weight
        loss = flow + weight * objective
        loss = loss + cfg.entropy_weight * entropy.loss + cfg.commitment_weight * commitment
        usage = lfq.codebook_usage(lfq.code_indices(q.detach(), cfg.group), self.vocabulary)
        metrics = {
            "loss": loss.detach(),
            "flow": flow.detach(),
            "perceptual": perceptual.detach(),
            "entropy": entropy.loss.detach(),
            "commitment": commitment.detach(),
            "perplexity": torch.tensor(usage["perplexity"]),
            "used_fraction": torch.tensor(usage["used_fraction"]),
            "stage": torch.tensor(float(stage)),
        }
        return loss, metrics, x_hat

    def train_step(self, x, epoch, gen, update):
        """One update of the optimiser of the epoch's stage (+ the critic's first, for baseline B2)."""
        loss, metrics, x_hat = self._terms(self.net, x, gen, epoch)
        if "critic" in self.modules:
            loss = loss + self._adversarial(2 * x - 1, x_hat, update)
        update(("model", "decoder", "posttrain")[self.stage(epoch)], loss)
        return metrics

    def _adversarial(self, x0: torch.Tensor, x_hat: torch.Tensor, update) -> torch.Tensor:
        """Baseline B2: one hinge step of the critic on (x, x̂), then the decoder's hinge term on x̂."""
        update("critic", discriminator_loss("hinge", self.critic(x0), self.critic(x_hat.detach())))
        self.critic.requires_grad_(False)  # the decoder's term needs no critic gradients
        term = self.cfg.adversarial_weight * generator_loss("hinge", self.critic(x_hat))
        self.critic.requires_grad_(True)
        return term

    def after_step(self, optimiser):
        if optimiser != "critic":
            for part in ("encoder", "decoder"):
                rescale_to_initial_norms(self.net[part].blocks, self.initial_norms[part])

    def sample_distance(
        self, decoder: nn.Module, q: torch.Tensor, x: torch.Tensor, gen: torch.Generator, checkpoint: bool
    ) -> torch.Tensor:
        """1B's objective: the logits MSE between x and a `posttrain_steps`-step sample of its code, from fresh
        noise on a random time grid, differentiable through the chain (when grad is enabled)."""
        if self.cfg.decoder == "regression":
            sampled = self._regress(decoder, q)
        else:
            z = torch.randn(x.shape, generator=gen, device=x.device)
            velocity = lambda x_s, t_s, _: decoder(x_s, q, t_s)  # noqa: E731
            sampled = rf.sample_with_grad(velocity, z, self.cfg.posttrain_steps, gen=gen, checkpoint=checkpoint)
        return self.perceptual.logits_mse((sampled + 1) / 2, x).mean()

    @torch.no_grad()
    def eval_step(self, x, epoch, gen):
        _, metrics, _ = self._terms(self.ema.module, x, gen, epoch)
        # 1B's objective, from the last 1A epoch (its baseline) on: before, its 8-step chain per val image would
        # cost ~0.3 s of each 2-3 s epoch for a curve nothing reads.
        if epoch >= self.cfg.pretrain_epochs:
            metrics["sample_distance"] = self.sample_distance(self.ema.module["decoder"], self.codes(x), x, gen, False)
        return metrics

    def selection(self):
        """The 1B epoch with the lowest val rFID (FlowMo stops post-training early, by validation rFID)."""
        if self.cfg.decoder == "flow" and self.fid_every:
            return "val_domain_rfid", self.cfg.pretrain_epochs + 1
        return None

    # --- decoding ---------------------------------------------------------------------------------------
    def _regress(self, decoder: nn.Module, q: torch.Tensor) -> torch.Tensor:
        """A regression decoder's x̂ in [−1, 1]: one pass from the code, at t = 1 with a zero image."""
        return -decoder(q.new_zeros(len(q), *self.image_shape), q, q.new_ones(len(q)))

    @torch.no_grad()
    def decode(
        self, q: torch.Tensor, gen: torch.Generator, steps: int, rho: float, guidance: float, interval
    ) -> torch.Tensor:
        """Images in [0, 1] from binary codes q (N, tokens, bits) with the EMA decoder."""
        decoder = self.ema.module["decoder"]
        if self.cfg.decoder == "regression":
            x = self._regress(decoder, q)
        else:
            z = torch.randn((len(q), *self.image_shape), generator=gen, device=q.device)
            x = rf.euler_sample(
                lambda x_t, t, cond: decoder(x_t, q if cond else None, t), z, steps, rho, guidance, interval
            )
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, tokens, bits) of images x in [0, 1] by the EMA encoder."""
        return lfq.quantize(self.ema.module["encoder"](2 * x - 1))

    def reconstruct(self, x, gen):
        cfg = self.cfg
        return self.decode(self.codes(x), gen, cfg.sampler_steps, cfg.rho, cfg.guidance, self.sigmas)

    def quick_reconstruct(self, x, gen):
        """The paper's sampler (ρ = 4, guidance 1.5 in its interval) with snapshot_steps: training keys only."""
        return self.decode(self.codes(x), gen, self.cfg.snapshot_steps, rf.RHO, rf.GUIDANCE, rf.GUIDANCE_INTERVAL)

    def reconstruction_distances(self, recon, x):
        distances = [
            self.perceptual.lpips(recon[i : i + 500].to(self.device), x[i : i + 500].to(self.device)).cpu()
            for i in range(0, len(x), 500)
        ]
        return {"perceptual": torch.cat(distances).mean().item()}

    def tokenize(self, x):
        cfg = self.cfg
        return lfq.code_indices(self.codes(x), cfg.group).flatten(1)

    def detokenize(self, tokens, gen):
        cfg = self.cfg
        q = lfq.indices_to_codes(tokens.view(len(tokens), cfg.tokens, -1), cfg.group)
        return self.decode(q, gen, cfg.sampler_steps, cfg.rho, cfg.guidance, self.sigmas)

    @torch.no_grad()
    def snapshot(self, fixed_batch, gen):
        pairs = torch.stack([fixed_batch, self.quick_reconstruct(fixed_batch, gen)], dim=1).flatten(0, 1)
        return {"reconstructions": pairs}

    @torch.no_grad()
    def test_metrics(self, batches, gen):
        """Losses on the test split (EMA network, 1A terms), the code's bits per pixel and its token usage."""
        self.train(False)
        totals: dict[str, float] = {}
        tokens, count = [], 0
        for x in batches:
            _, metrics, _ = self._terms(self.ema.module, x, gen, 1)
            for name in ("flow", "entropy", "commitment"):
                totals[name] = totals.get(name, 0.0) + metrics[name].item() * len(x)
            tokens.append(self.tokenize(x).cpu())
            count += len(x)
        _, h, w = self.image_shape
        usage = lfq.codebook_usage(torch.cat(tokens), self.vocabulary)
        return {
            **{k: v / count for k, v in totals.items()},
            "bits_per_pixel": lfq.bits_per_pixel(self.cfg.tokens, self.cfg.bits, h, w),
            "token_perplexity": usage["perplexity"],
            "token_used_fraction": usage["used_fraction"],
        }

    # --- figures ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def figures(self, out_dir: Path, seed: int, images: torch.Tensor) -> list[Path]:
        """rho_grid.png (ρ = 1 vs 4), steps_grid.png (1/5/25 steps), noise_draws.png (one image's code decoded
        from several noise draws: the decoder is stochastic), token_usage.png (how often each token id occurs)."""
        cfg, x = self.cfg, images[:8].to(self.device)
        q = self.codes(x)

        def rows(settings):
            return [x] + [self.decode(q, stream(seed, "figure_decoding", self.device), *s) for _, s in settings]

        rho = [(f"rho {r:g}", (cfg.sampler_steps, r, cfg.guidance, self.sigmas)) for r in (1.0, 4.0)]
        steps = [(f"{n} steps", (n, cfg.rho, cfg.guidance, self.sigmas)) for n in (1, 5, 25)]
        save_labelled_rows(rows(rho), ["original"] + [label for label, _ in rho], out_dir / "rho_grid.png")
        save_labelled_rows(rows(steps), ["original"] + [label for label, _ in steps], out_dir / "steps_grid.png")
        draws = [
            self.decode(
                q[:4],
                stream(seed, f"noise_draw_{i}", self.device),
                cfg.sampler_steps,
                cfg.rho,
                cfg.guidance,
                self.sigmas,
            )
            for i in range(NOISE_DRAWS)
        ]
        save_labelled_rows(
            [x[:4], *draws], ["original"] + [f"draw {i + 1}" for i in range(NOISE_DRAWS)], out_dir / "noise_draws.png"
        )
        counts = torch.bincount(self.tokenize(images.to(self.device)).flatten().cpu(), minlength=self.vocabulary)
        plot_token_usage(counts.numpy(), out_dir / "token_usage.png")
        return [out_dir / n for n in ("rho_grid.png", "steps_grid.png", "noise_draws.png", "token_usage.png")]
