"""Speed of one VAE training epoch on MNIST: genlab's `fit` against the seed blog post's loop.

Both sides train the seed configuration (MLP 784-512-256-(mu, logvar) z=20, decoder 20-256-512-784,
Adam lr 1e-3, batch 64, Bernoulli cross-entropy + KL) for one epoch in the same process:

  reference  seed 000's loop: torchvision MNIST + ToTensor, DataLoader(batch_size=64, shuffle=True),
             sigmoid decoder + F.binary_cross_entropy(reduction='sum'), 60,000 train images
  genlab     `fit` with NullTracker, no checkpoint, epochs=1 on the prepared MNIST; its train split is
             what data.val_fraction leaves (default 0.001: 59,940 train + 60 val images, the val pass is
             timed too)

Prints epoch time, images/s, training GFLOP/s (from the Linear shapes: 2*in*out per image forward,
x3 for forward+backward) and that as a fraction of a 2048^3 fp32 matmul's GFLOP/s on this machine.
Asserts nothing. The last line is `speedup: <ratio>` = reference time per image / ours.

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/vae_epoch.py [--device auto|cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as transforms
from benchlib import SEED_VAE, build, train
from torch import nn
from torch.utils.data import DataLoader

from genlab.config.experiment import config_from_dict
from genlab.core.runtime import resolve_device
from genlab.data import load_prepared, prepare
from genlab.training.loop import Optimisation, compile_networks
from genlab.training.sources import image_source

WARMUP_BATCHES = 20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # first call pays for thread-pool start-up and allocation
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best / 1e9


def train_flops_per_image(modules) -> int:
    fwd = sum(2 * m.in_features * m.out_features for mod in modules for m in mod.modules() if isinstance(m, nn.Linear))
    return 3 * fwd


# --- the reference: seed 000's model, loss and loop, as the blog post wrote them ----------------
class SeedVAE(nn.Module):
    def __init__(self, input_dim=784, latent_dim=20):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU())
        self.fc_mu = nn.Linear(256, latent_dim)
        self.fc_logvar = nn.Linear(256, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.ReLU(),
            nn.Linear(256, 512),
            nn.ReLU(),
            nn.Linear(512, input_dim),
            nn.Sigmoid(),
        )

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def seed_loss(recon_x, x, mu, logvar):
    recon = F.binary_cross_entropy(recon_x, x, reduction="sum")
    return recon - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def reference_epoch(root: str, device: torch.device) -> tuple[float, int]:
    # The seed used Normalize((0.5,), (0.5,)), which puts targets in [-1, 1] and makes BCE raise;
    # ToTensor alone is the version of its loop that runs.
    dataset = torchvision.datasets.MNIST(root=root, train=True, transform=transforms.ToTensor(), download=False)
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    vae = SeedVAE().to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step(images):
        images = images.view(-1, 784).to(device)
        recon, mu, logvar = vae(images)
        loss = seed_loss(recon, images, mu, logvar)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for i, (images, _) in enumerate(loader):
        step(images)
        if i + 1 == WARMUP_BATCHES:
            break
    sync(device)
    began = time.perf_counter()
    total_loss = 0.0
    for images, _ in loader:
        total_loss += step(images)
    sync(device)
    return time.perf_counter() - began, len(dataset)


# --- genlab ---------------------------------------------------------------------------------
def genlab_epoch(cfg, data, device: torch.device) -> tuple[float, list, object]:
    # Warm-up on a throwaway model so that the timed model starts exactly as `dvc repro train` would.
    warm = build(cfg, data, device)
    if cfg.train.compile:  # compiled here, so that the timed epoch reuses the compiled code
        for module in warm.modules.values():
            compile_networks(module)
    update, gen = Optimisation(warm, cfg.train).update, torch.Generator(device=device).manual_seed(0)
    to_input = image_source(data, cfg.data.binarize).to_input
    for i in range(WARMUP_BATCHES):
        u8 = data.train.images[i * 64 : (i + 1) * 64].to(device)
        warm.train_step(to_input(u8, gen), 1, gen, update)

    family = build(cfg, data, device)
    sync(device)
    began = time.perf_counter()
    history = train(cfg, data, family)
    sync(device)
    return time.perf_counter() - began, history, family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--mirror", default="../shared/datasets/mnist", help="directory holding the four MNIST .gz files"
    )
    parser.add_argument("--root", default="bench/out/data", help="download cache (torchvision layout)")
    parser.add_argument("--val-fraction", type=float, default=0.001)
    parser.add_argument("--compile", action="store_true", help="train.compile=true: torch.compile the networks")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = config_from_dict(
        {
            "seed": 0,
            "device": str(device),
            "data": {
                "name": "mnist",
                "root": args.root,
                "mirror": args.mirror,
                "val_fraction": args.val_fraction,
                "binarize": "none",
            },
            "vae": SEED_VAE,
            "train": {"epochs": 1, "batch_size": 64, "lr_schedule": "constant", "compile": args.compile},
        }
    )
    prepared_dir = os.path.join("bench/out", f"prepared_mnist_val{args.val_fraction:g}")
    prepare(cfg, prepared_dir)  # also leaves the verified raw files where torchvision's MNIST reads them
    data = load_prepared(prepared_dir)

    print(
        f"machine: {os.cpu_count()} logical cores, {cpu_model()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {torch.get_num_threads()} torch threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(f"load average before timing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = matmul_gflops(device)
    print(f"matmul 2048x2048 @ 2048x2048 fp32: {peak:.1f} GFLOP/s (best of 7)")

    ref_s, ref_n = reference_epoch(args.root, device)
    ours_s, history, family = genlab_epoch(cfg, data, device)
    ours_n, val_n = len(data.train), len(data.val)

    flops = train_flops_per_image(family.modules.values())
    print(f"training FLOPs per image: {flops / 1e6:.3f} MFLOP (Linear layers, forward x3)")
    for name, seconds, n, extra in (
        ("reference", ref_s, ref_n, "torchvision MNIST + DataLoader, seed loop"),
        ("genlab", ours_s, ours_n, f"fit, + {val_n} val images evaluated inside the timed epoch"),
    ):
        gflops = flops * n / seconds / 1e9
        print(
            f"{name}: {n} train images in {seconds:.2f} s = {n / seconds:,.0f} img/s, "
            f"{gflops:.1f} GFLOP/s = {gflops / peak:.1%} of matmul ({extra})"
        )
    print(
        f"genlab epoch scaled to 60,000 images: {ours_s * 60000 / ours_n:.2f} s; "
        f"train loss {history[-1]['train_loss']:.2f} nats/image after 1 epoch"
    )
    print(f"speedup: {(ref_s / ref_n) / (ours_s / ours_n):.2f}")


if __name__ == "__main__":
    main()
