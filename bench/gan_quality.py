"""Quality of the GAN family on MNIST: each loss with the same budget, scored like the evaluate stage.

For every loss in --losses: train DCGAN for --epochs (identical data passes for D; WGAN-GP's generator
makes 1 step per n_critic = 5), then score --num-samples samples of the EMA generator against as many
test images in the domain classifier's feature space: FID (and the train-vs-test floor), IS,
precision/recall (k=3), density/coverage (k=5). --inception adds the standard Inception-v3 FID
(a few images/s on a CPU: use it on a GPU). Anchors (Lucic et al. 2018, best Inception FID on MNIST
after a large hyperparameter search): NS-GAN 6.8, LSGAN 7.8, WGAN-GP 20.3; ~10 with default settings.

The domain classifier is trained once with the classifier defaults and cached in bench/out/.
Slow on 2 CPU cores (minutes per epoch); run it in the background:

    cd /work/main && PYTHONPATH=src nice -n 19 .venv/bin/python bench/gan_quality.py [--epochs 5] [--width 32] \\
        [--losses bce wgan-gp lsgan hinge] [--device auto] > bench/out/gan_quality.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from benchlib import build, classifier_for, prepared, train

from genlab.config.experiment import config_from_dict
from genlab.core.runtime import resolve_device, stream
from genlab.evaluation.scoring import image_scores, real_pair, sample_in_batches
from genlab.models.gan.losses import LOSSES

ANCHORS = {"bce": 6.8, "lsgan": 7.8, "wgan-gp": 20.3}  # Lucic et al. 2018, Inception FID, best of a large search


def make_config(args, loss: str):
    return config_from_dict(
        {
            "seed": 0,
            "device": args.device,
            "data": {"name": "mnist", "root": "bench/out/data", "mirror": args.mirror},
            "model": {"family": "gan"},
            "gan": {"loss": loss, "width": args.width, "eval_every": 0},
            "train": {"epochs": args.epochs, "batch_size": 64, "lr_schedule": "constant"},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=32, help="gan.width (64 = DCGAN; 32 keeps CPU epochs in minutes)")
    parser.add_argument("--losses", nargs="+", default=["bce", "wgan-gp", "lsgan", "hinge"], choices=LOSSES)
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--inception", action="store_true", help="also the Inception-v3 FID (slow on CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--mirror", default="../shared/datasets/mnist", help="directory holding the four MNIST .gz files"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the log is read while the run is under way

    base = make_config(args, "bce")
    data = prepared(base)
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, device {device}; "
        f"MNIST train {len(data.train)}, {args.epochs} epochs, batch 64, width {args.width}"
    )
    classifier = classifier_for(data, base, device)
    n = min(args.num_samples, len(data.test))
    test, train_images = real_pair(data, n, stream(base.seed, "real_train_pick"))

    rows = []
    for loss in args.losses:
        cfg = make_config(args, loss)
        family = build(cfg, data, device)
        began = time.perf_counter()
        history = train(cfg, data, family)
        seconds = time.perf_counter() - began
        family.train(False)
        generated = sample_in_batches(family.sample, n, stream(cfg.seed, "eval_samples", device), 500)
        inception = {"weights": None, "device": device} if args.inception else None
        train_all = data.to_unit(data.train.images)
        scores = image_scores(
            classifier,
            test,
            cfg.seed,
            0,
            train=train_images,
            train_all=train_all,
            generated=generated,
            inception=inception,
        )
        scores.update(
            loss=loss,
            g_steps=family.ema.num_updates.item(),
            seconds=seconds,
            d_loss=history[-1]["train_d_loss"],
            g_loss=history[-1]["train_g_loss"],
        )
        rows.append(scores)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))

    print(f"\n{n} samples vs {n} test images, domain-classifier features; floor = train vs test images")
    columns = ["loss", "G steps", "domain FID", "floor", "IS", "precision", "recall", "density", "coverage"]
    columns += ["Inception FID", "anchor"] if args.inception else []
    columns.append("train s")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [
            r["loss"],
            r["g_steps"],
            f"{r['domain_fid']:.2f}",
            f"{r['domain_fid_floor']:.2f}",
            f"{r['domain_is']:.2f}",
        ]
        cells += [f"{r[k]:.3f}" for k in ("precision", "recall", "density", "coverage")]
        if args.inception:
            cells += [f"{r['inception_fid']:.1f}", ANCHORS.get(r["loss"], "-")]
        cells.append(f"{r['seconds']:.0f}")
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
