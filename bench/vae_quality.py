"""Quality of the seed-configuration VAE on MNIST after --epochs of training (default 50), two conventions:

  (a) data.binarize=none: grey levels in [0, 1] scored with Bernoulli cross-entropy. Prints the negative
      ELBO (nats) on the val split at epoch 10 (anchor: PyTorch's example VAE, ~105.6 nats after 10 epochs)
      and on the 10k test set at the end. Cross-entropy on grey levels is not a normalised likelihood.
  (b) data.binarize=dynamic: trained on a fresh binarisation per visit; the 10k test images are binarised
      once with a seeded draw, exactly as stages/evaluate.py does, and scored with the importance-weighted
      NLL, k=--iw-samples (default 5000; anchor: 86.76 nats, Burda et al. 2015, VAE with 1 stochastic layer).

Everything goes through the library: prepare (bench/benchlib.py), build_family, fit (NullTracker), test_metrics.
Slow (tens of minutes on 2 CPU cores); run it in the background:

    cd /work/main && PYTHONPATH=src nice -n 19 .venv/bin/python bench/vae_quality.py [--part a|b|both] \\
        [--epochs 50] [--iw-samples 5000] [--device auto|cpu|cuda] > bench/out/quality.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from benchlib import SEED_VAE, build, prepared, test_metrics, train

from genlab.config.experiment import config_from_dict
from genlab.core.runtime import resolve_device, stream_seed

ANCHOR_A = "PyTorch examples/vae (784-400-20, batch 128): test loss ~105.6 nats after 10 epochs"
ANCHOR_B = "Burda, Grosse & Salakhutdinov 2015 (arXiv:1509.00519), Table 1, VAE k=1, 1 stochastic layer: 86.76 nats"


def make_config(args, binarize: str):
    return config_from_dict(
        {
            "seed": 0,
            "device": args.device,
            "data": {"name": "mnist", "root": args.root, "mirror": args.mirror, "binarize": binarize},
            # Part (a) reports no IW bound (it is not a likelihood on grey levels), so one sample keeps it cheap.
            "vae": {**SEED_VAE, "iw_samples": args.iw_samples if binarize == "dynamic" else 1},
            "train": {"epochs": args.epochs, "batch_size": 64, "lr_schedule": "constant"},
        }
    )


def train_and_test(cfg, data):
    """What `dvc repro train evaluate` does, minus MLflow and checkpoints."""
    family = build(cfg, data, resolve_device(cfg.device))
    history = train(cfg, data, family)
    return history, test_metrics(cfg, data, family)  # a dynamic test set is binarised once, as evaluate does


def part_a(args, data) -> None:
    began = time.perf_counter()
    cfg = make_config(args, "none")
    history, results = train_and_test(cfg, data)
    n = data.manifest["split_sizes"]
    print(f"(a) binarize=none, {len(history)} epochs, train/val/test = {n['train']}/{n['val']}/{n['test']}")
    if len(history) >= 10:
        print(f"(a) val negative ELBO at epoch 10: {-history[9]['val_elbo']:.2f} nats  [anchor: {ANCHOR_A}]")
    print(f"(a) val negative ELBO at epoch {len(history)}: {-history[-1]['val_elbo']:.2f} nats")
    print(
        f"(a) test negative ELBO at epoch {len(history)}: {-results['elbo']:.2f} nats "
        f"(recon {results['recon']:.2f} + KL {results['kl']:.2f}; {results['bpd']:.4f} bits/dim)"
    )
    print(f"(a) elapsed: {time.perf_counter() - began:.0f} s")


def part_b(args, data) -> None:
    began = time.perf_counter()
    cfg = make_config(args, "dynamic")
    history, results = train_and_test(cfg, data)
    seed = stream_seed(cfg.seed, "test_noise")
    print(f"(b) binarize=dynamic, {len(history)} epochs, test images binarised once (stream seed {seed})")
    print(
        f"(b) test negative ELBO: {-results['elbo']:.2f} nats (recon {results['recon']:.2f} + KL {results['kl']:.2f})"
    )
    print(
        f"(b) test IW-NLL k={results['iw_samples']}: {results['iw_nll']:.2f} nats ({results['iw_bpd']:.4f} bits/dim)  "
        f"[anchor: {ANCHOR_B}, after 3,280 epochs]"
    )
    print(f"(b) elapsed: {time.perf_counter() - began:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="both", choices=["a", "b", "both"])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--mirror", default="../shared/datasets/mnist", help="directory holding the four MNIST .gz files"
    )
    parser.add_argument("--root", default="bench/out/data", help="download cache (torchvision layout)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the log is read while the run is under way

    # The split depends only on the seed and val_fraction, not on binarize: one prepared copy serves both parts.
    data = prepared(make_config(args, "none"))
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"device {resolve_device(args.device)}",
        flush=True,
    )
    if args.part in ("a", "both"):
        part_a(args, data)
    if args.part in ("b", "both"):
        part_b(args, data)


if __name__ == "__main__":
    main()
