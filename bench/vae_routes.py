"""The seed VAE's training step by route, side by side in one process, against its floor (issue 25.5).

Every route trains seed 000's model (MLP 784-512-256-(mu, logvar) z=20 and back, Bernoulli cross-entropy + KL,
Adam lr 1e-3, batch 64) on the same MNIST batches (grey levels in [0, 1], held as float tensors, so no route
pays for data loading; seed and pythae from the same initial weights, genlab from its own seeded ones), and is
timed as the median over 5 rounds of the mean ms per step over --steps steps, after 20 warm-up steps (which
include any compilation):

  seed          the blog post's step: forward, F.binary_cross_entropy(reduction='sum') + KL, Adam (for-each)
  genlab        `family.train_step` with the loop's `Optimisation.update` (fused Adam): what `fit` runs per batch
  networks      the same with `train.compile=true`'s compiled networks (`compile_networks`)
  whole-step    `torch.compile` of the family's forward and loss as one graph (its noise drawn outside: a seeded
                generator inside breaks the graph), so inductor fuses the elementwise tail around the products
                and AOTAutograd compiles the backward with it, and of a for-each Adam step (the fused Adam
                kernel is opaque to the compiler: inductor writes its own fused update)
  pythae        pythae 0.1.2's `BaseTrainer` step on the same architecture (`model(inputs)` with its BCE loss,
                then `_optimizers_step`), when pythae is importable: a benchmark-only install, never a
                project dependency (`pip install --target bench/out/pythae --no-deps pythae==0.1.2 imageio dill`,
                then PYTHONPATH=...:bench/out/pythae)

and the floor of bench/vae_floor.py (the step's 17 matrix products and one fused Adam update, nothing else) in
the same process. Prints each route's ms/step, its ratio to the floor and to genlab's eager step, and the
final train loss of each route (the routes must learn alike); `--profile` adds torch.profiler's operator
table of genlab's eager step. Asserts nothing.

    PYTHONPATH=src:bench:bench/out/pythae .venv/bin/python bench/vae_routes.py [--steps 150] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import vae_floor
from benchlib import SEED_VAE, build, prepared
from vae_epoch import SeedVAE, cpu_model, seed_loss

from genlab.config.experiment import config_from_dict
from genlab.processes.likelihoods import kl_standard_normal
from genlab.training.loop import Optimisation, compile_networks

WARMUP, ROUNDS, BATCH = 20, 5, 64


def timed_steps(step, batches: torch.Tensor, steps: int) -> tuple[float, float]:
    """(median ms/step over ROUNDS rounds of `steps` steps, the last step's loss) after WARMUP steps."""
    for i in range(WARMUP):
        step(batches[i % len(batches)])
    rounds, loss = [], float("nan")
    for r in range(ROUNDS):
        began = time.perf_counter()
        for i in range(steps):
            loss = step(batches[(r * steps + i) % len(batches)])
        rounds.append((time.perf_counter() - began) / steps * 1e3)
    return statistics.median(rounds), float(loss)


def seed_route(init: dict):
    model = SeedVAE()
    model.load_state_dict(init)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x):
        x = x.view(-1, 784)
        recon, mu, logvar = model(x)
        loss = seed_loss(recon, x, mu, logvar)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss.item() / len(x)

    return step


def genlab_route(cfg, data, mode: str):
    family = build(cfg, data, torch.device("cpu"))
    optimisation = Optimisation(family, cfg.train)
    gen = torch.Generator().manual_seed(0)
    if mode == "networks":
        for module in family.modules.values():
            compile_networks(module)
    if mode != "whole-step":
        return lambda x: family.train_step(x, 1, gen, optimisation.update)["loss"].item()
    # The fused Adam kernel is opaque to the compiler: the for-each Adam, compiled, is inductor's fused update.
    optimiser = torch.optim.Adam(optimisation.params["adam"], lr=SEED_VAE["lr"], foreach=True)

    # family.terms with its noise drawn outside: a seeded torch.Generator inside breaks the graph in two
    @torch.compile
    def loss_of(x, eps):
        mu, logvar = family.encoder(x)
        recon = -family.log_likelihood(family.decoder(mu + eps * torch.exp(0.5 * logvar)), x)
        return (recon + kl_standard_normal(mu, logvar)).mean()

    adam_step = torch.compile(optimiser.step)

    def step(x):
        loss = loss_of(x, torch.randn(len(x), SEED_VAE["latent_dim"], generator=gen))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        adam_step()
        return loss.item()

    return step


def pythae_route(init: dict):
    """pythae's VAE with the seed's networks and weights, stepped as its BaseTrainer steps (None: not installed)."""
    try:
        from pythae.data.datasets import BaseDataset
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
    except ImportError:
        return None
    seed = SeedVAE()
    seed.load_state_dict(init)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body, self.mu, self.logvar = seed.encoder, seed.fc_mu, seed.fc_logvar

        def forward(self, x):
            h = self.body(x.reshape(len(x), -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = seed.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=self.body(z).reshape(len(z), 1, 28, 28))

    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"), Encoder(), Decoder())
    config = BaseTrainerConfig(
        output_dir="bench/out/pythae_runs", learning_rate=1e-3, per_device_train_batch_size=BATCH, no_cuda=True
    )
    trainer = BaseTrainer(model, BaseDataset(torch.rand(BATCH, 1, 28, 28), torch.zeros(BATCH)), training_config=config)
    trainer.set_optimizer()
    model.train()

    def step(x):
        output = model({"data": x}, epoch=1, dataset_size=60000, uses_ddp=False)
        trainer._optimizers_step(output)
        return output.loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per timed round")
    parser.add_argument("--mirror", default="../shared/datasets/mnist", help="the four MNIST .gz files")
    parser.add_argument(
        "--profile", action="store_true", help="then torch.profiler's table of genlab's eager step (where it goes)"
    )
    args = parser.parse_args()
    cfg = config_from_dict(
        {
            "seed": 0,
            "device": "cpu",
            "data": {"name": "mnist", "root": "bench/out/data", "mirror": args.mirror, "binarize": "none"},
            "vae": SEED_VAE,
            "train": {"epochs": 1, "batch_size": BATCH, "lr_schedule": "constant"},
        }
    )
    data = prepared(cfg)
    n = (WARMUP + ROUNDS * args.steps) * BATCH
    images = data.to_unit(data.train.images[: min(n, len(data.train))])
    batches = images[: len(images) // BATCH * BATCH].view(-1, BATCH, 1, 28, 28)
    print(
        f"machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(batches)} MNIST batches of {BATCH}; {ROUNDS} rounds of {args.steps} steps after {WARMUP}"
    )
    floor = sum(s for _, s in vae_floor.matmuls()) + vae_floor.adam()
    print(f"floor (17 products + fused Adam, vae_floor.py): {floor * 1e3:.3f} ms/step")

    torch.manual_seed(0)
    init = SeedVAE().state_dict()
    routes = {
        "seed": lambda: seed_route(init),
        "genlab": lambda: genlab_route(cfg, data, "eager"),
        "networks": lambda: genlab_route(cfg, data, "networks"),
        "whole-step": lambda: genlab_route(cfg, data, "whole-step"),
        "pythae": lambda: pythae_route(init),
    }
    results = {}
    for name, make in routes.items():
        step = make()
        if step is None:
            print(f"{name:<11} not installed: see this script's docstring")
            continue
        began = time.perf_counter()
        results[name] = timed_steps(step, batches, args.steps)
        print(f"{name:<11} {results[name][0]:7.3f} ms/step  (route {time.perf_counter() - began:.0f} s)", flush=True)
    eager = results["genlab"][0]
    print("\nroute        ms/step  x floor  x genlab  loss (nats/image, last step)")
    for name, (ms, loss) in results.items():
        print(f"{name:<11} {ms:8.3f} {ms / (floor * 1e3):8.2f} {ms / eager:9.2f}  {loss:.1f}")
    if "pythae" in results:
        print(f"pythae / genlab: {results['pythae'][0] / eager:.2f}")
    if args.profile:
        profile(genlab_route(cfg, data, "eager"), batches, args.steps)


def profile(step, batches: torch.Tensor, steps: int) -> None:
    """Self CPU time per operator over `steps` eager genlab steps: the products (addmm, mm) against the rest."""
    for i in range(WARMUP):
        step(batches[i])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm"))
    print(
        f"\nprofile of {steps} genlab steps: {total / steps / 1e3:.3f} ms/step of self CPU time (profiler on), "
        f"matrix products {products / total:.0%}"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
