"""Speed and quality of the diffusion family (default ddpm.* params) on digits and MNIST.

speed:   training images/s (batch 64) and sampling images/s at 10, 50 and 1000 steps (DDIM η = 0;
         1000 steps = every timestep) for 8x8 digits and 28x28 MNIST.
quality: train on digits for --digits-epochs and on MNIST for --mnist-epochs, then report the test
         negative variational bound in bits/dim (stratified estimate ± standard error, as the evaluate
         stage computes it) and domain FID / IS / precision / recall of DDIM samples (--sample-steps).
         Anchors: DDPM on CIFAR-10 3.70-3.75 bits/dim and Inception FID 3.17 (Ho et al. 2020) after
         800k steps of a 35.7M-parameter U-Net on TPUs; a CPU budget is far from that.

    cd /work/main && PYTHONPATH=src nice -n 19 .venv/bin/python bench/ddpm_bench.py [--part speed|quality|both] \\
        [--digits-epochs 100] [--mnist-epochs 1] [--mnist-test 1000] [--device auto] > bench/out/ddpm.log 2>&1 &
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
from benchlib import build, classifier_for, prepared, test_metrics, train

from genlab.config.experiment import config_from_dict
from genlab.core.runtime import resolve_device, seed_everything, stream
from genlab.evaluation.scoring import image_scores, real_pair, sample_in_batches
from genlab.models import DataSpec, build_family
from genlab.training.loop import Optimisation

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}


def make_config(args, dataset: str, epochs: int):
    return config_from_dict(
        {
            "seed": 0,
            "device": args.device,
            "data": {"name": dataset, "root": "bench/out/data", "mirror": args.mirror if dataset == "mnist" else None},
            "model": {"family": "ddpm"},
            "ddpm": {"lr": args.lr, "bound_strata": args.bound_strata, "sampler_steps": args.sample_steps},
            "train": {"epochs": max(epochs, 1), "batch_size": 64, "lr_schedule": "constant"},
        }
    )


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def speed(args, device) -> None:
    for dataset, shape in SHAPES.items():
        cfg = make_config(args, dataset, 1)
        seed_everything(cfg.seed, "model_init")
        family = build_family("ddpm", cfg.ddpm, DataSpec(shape, 256), device)
        update = Optimisation(family, cfg.train).update
        gen = stream(cfg.seed, "bench", device)
        x = torch.rand(64, *shape, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        seconds = timed(lambda: (family.train_step(x, 1, gen, update), sync()), 10)  # noqa: B023 (called at once)
        params = sum(p.numel() for p in family.unet.parameters())
        print(f"speed {dataset} {shape}: U-Net {params / 1e6:.2f}M params; training {64 / seconds:.0f} images/s")
        family.train(False)
        for steps in (10, 50, 1000):
            n = 64 if steps <= 50 or device.type == "cuda" else 8  # 1000 CPU steps: a smaller batch
            z = family.prior(n, gen)

            def sample(z=z, steps=steps):
                family.process.ddim_sample(family.ema, z, steps, 0.0, None)  # noqa: B023 (called at once)
                sync()  # noqa: B023

            seconds = timed(sample, 1 if steps == 1000 else 3)
            print(f"speed {dataset}: sampling {steps:>4} steps: {n / seconds:.2f} images/s (batch {n})")


def quality(args, device, dataset: str, epochs: int) -> None:
    cfg = make_config(args, dataset, epochs)
    data = prepared(cfg)
    classifier = classifier_for(data, cfg, device)
    family = build(cfg, data, device)
    began = time.perf_counter()
    train(cfg, data, family)
    train_s = time.perf_counter() - began

    n_test = min(args.mnist_test if dataset == "mnist" else len(data.test), len(data.test))
    bound = test_metrics(cfg, data, family, n_test)
    n = min(args.num_samples, len(data.test))
    began = time.perf_counter()
    generated = sample_in_batches(family.sample, n, stream(cfg.seed, "eval_samples", device), 250)
    sample_s = time.perf_counter() - began
    test, train_images = real_pair(data, n, stream(cfg.seed, "real_train_pick"))
    train_all = data.to_unit(data.train.images)
    scores = image_scores(classifier, test, cfg.seed, 0, train=train_images, train_all=train_all, generated=generated)
    steps = epochs * math.ceil(len(data.train) / 64)
    print(
        f"quality {dataset}: {epochs} epochs = {steps} steps ({train_s:.0f} s); bound on {n_test} test images, "
        f"{bound['bound_strata']} strata: {bound['bpd']:.3f} ± {bound['bpd_stderr']:.3f} bits/dim "
        f"(prior {bound['prior_bpd']:.4f} + diffusion {bound['diffusion_bpd']:.3f} "
        f"+ decoder {bound['decoder_bpd']:.4f}; "
        f"uniform {math.log2(data.levels):.2f})"
    )
    print(
        f"quality {dataset}: {n} DDIM samples, {args.sample_steps} steps ({sample_s:.0f} s): domain FID "
        f"{scores['domain_fid']:.2f} (floor {scores['domain_fid_floor']:.2f}), IS {scores['domain_is']:.2f} "
        f"(real {scores['domain_is_real']:.2f}), precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, "
        f"density {scores['density']:.3f}, coverage {scores['coverage']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="both", choices=["speed", "quality", "both"])
    parser.add_argument("--digits-epochs", type=int, default=100)
    parser.add_argument("--mnist-epochs", type=int, default=1, help="0 skips MNIST quality")
    parser.add_argument("--mnist-test", type=int, default=1000, help="MNIST test images in the bound (10000 = all)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bound-strata", type=int, default=100)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--mirror", default="../shared/datasets/mnist", help="directory holding the four MNIST .gz files"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the log is read while the run is under way
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, device {device}")
    if args.part in ("speed", "both"):
        speed(args, device)
    if args.part in ("quality", "both"):
        quality(args, device, "digits", args.digits_epochs)
        if args.mnist_epochs:
            quality(args, device, "mnist", args.mnist_epochs)


if __name__ == "__main__":
    main()
