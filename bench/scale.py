"""Training speed of each family under each scale-out setting: 1 vs N workers, fp32 / bf16 / fp16 / compile.

For each family (vae, gan, ddpm, flowmo at params.yaml's sizes; MNIST from the local mirror, the first
--train-images training images, 500 validation images) and each setting, trains --epochs epochs through
genlab's loop and prints one table row: images/s of the steady epochs (median over epochs 2..E; epoch 1
pays for warm-up and compilation and is shown apart) and the last epoch's headline validation metric
(VAE: ELBO, nats/image; DDPM: L_simple; GAN: domain FID and FlowMo: domain rFID, of 1,000 images).

Settings: fp32, bf16, fp16 (CUDA only), compile (fp32 + torch.compile), workers (fp32, --workers
torchrun workers: gloo on CPU with cores/N threads each, NCCL on CUDA with one GPU each). The same global
batch (--batch-size) everywhere, so every setting takes the same number of optimiser steps.

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/scale.py                      # CPU: all of it
    PYTHONPATH=src .venv/bin/python bench/scale.py --families vae --settings fp32 workers

On a GPU box (one GPU; then every GPU of the machine as workers):
    PYTHONPATH=src .venv/bin/python bench/scale.py --device cuda --settings fp32 bf16 fp16 compile --train-images 54000
    PYTHONPATH=src .venv/bin/python bench/scale.py --device cuda --settings workers \\
        --workers $(nvidia-smi -L | wc -l) --train-images 54000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from benchlib import OUT, build, classifier_for, prepared

from genlab.config.experiment import config_from_dict
from genlab.data import load_prepared
from genlab.evaluation.scoring import fid_monitor
from genlab.training import distributed
from genlab.training.loop import EPOCH_KEY, NullTracker, fit
from genlab.training.sources import Source, image_source

HEADLINE = {"vae": "val_elbo", "ddpm": "val_loss", "gan": "val_domain_fid", "flowmo": "val_domain_rfid"}
SECTIONS = {"gan": {"eval_every": 10**6}, "flowmo": {"patch": 4, "eval_every": 10**6}}  # scored after the last epoch
SETTINGS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "compile": {"compile": True},
    "workers": {},  # + processes
}


class EpochTimes(NullTracker):
    def __init__(self):
        self.seconds: list[float] = []

    def log_metrics(self, metrics, step=None):
        if EPOCH_KEY in metrics:
            self.seconds.append(metrics[EPOCH_KEY])


def config(args, family: str, setting: str, processes: int = 1):
    return config_from_dict(
        {
            "seed": 0,
            "device": args.device,
            "data": {"name": "mnist", "root": "bench/out/data", "mirror": args.mirror},
            "model": {"family": family},
            family: SECTIONS.get(family, {}),
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr_schedule": "constant",
                "processes": processes,
                **SETTINGS[setting],
            },
        }
    )


def train(args, family_name: str, setting: str, processes: int) -> dict | None:
    """One training run in this process (a worker's share of it under torchrun); rank 0's figures."""
    cfg = config(args, family_name, setting, processes)
    world, device = distributed.join(cfg.device, processes)
    torch.set_num_threads(max(1, args.threads // world.size))
    data = load_prepared(OUT / "prepared_mnist")  # prepared by the parent before any worker starts
    family = build(cfg, data, device)
    distributed.sync_batchnorm(family.modules.values(), device, world)
    for needed in family.upstream:
        family.attach(needed.name, classifier_for(data, cfg, device, needed.stage))
    scorer = None
    if family.fid_every:
        val = data.to_unit(data.val.images[:1000])
        scorer = fid_monitor(family.upstreams[family.config_class.SCORED_BY], val, 1000, device, cfg.seed)
    images = image_source(data, "none")
    source = Source(images.train[: args.train_images], images.val[:500], images.test, images.to_input)
    times = EpochTimes()
    history = fit(family, source, cfg.train, cfg.seed, key="bench", checkpoint_path=None, tracker=times,
                  scorer=scorer, world=world)  # fmt: skip
    distributed.leave()
    if not world.main:
        return None
    steady = statistics.median(times.seconds[1:]) if len(times.seconds) > 1 else times.seconds[0]
    return {
        "first_epoch_s": times.seconds[0],
        "img_per_s": len(source.train) / steady,
        "metric": history[-1].get(HEADLINE[family_name], float("nan")),
        "device": str(device),
    }


def in_workers(args, family: str) -> dict:
    """The workers setting: this script again, as --workers torchrun workers; rank 0 writes the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in WORKER_OPTIONS]
        command = distributed.launch_command(args.workers, [__file__, "--worker", family, str(result), *options])
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // args.workers))}
        subprocess.run(command, check=True, env=env)
        return json.loads(result.read_text())


WORKER_OPTIONS = ("epochs", "train_images", "batch_size", "device", "mirror", "threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(HEADLINE), choices=list(HEADLINE))
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "compile", "workers"], choices=SETTINGS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch of every setting")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all (split over workers)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--mirror", default="../shared/datasets/mnist")
    parser.add_argument("--worker", nargs=2, metavar=("FAMILY", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    if args.worker:
        family, result = args.worker
        figures = train(args, family, "workers", int(os.environ["WORLD_SIZE"]))
        if figures is not None:
            Path(result).write_text(json.dumps(figures))
        return

    base = config(args, "vae", "fp32")
    data = prepared(base)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    for section in ("classifier", "perceptual"):
        classifier_for(data, base, device, section)  # trained once, cached for every run and worker
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.threads} threads, device {device}, "
          f"{args.train_images} train images, global batch {args.batch_size}, {args.epochs} epochs")  # fmt: skip
    print("| family | setting | workers x threads | epoch 1 s | img/s (steady) | headline metric |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        for setting in args.settings:
            if setting == "workers":
                figures, layout = in_workers(args, family), f"{args.workers} x {max(1, args.threads // args.workers)}"
            else:
                figures, layout = train(args, family, setting, 1), f"1 x {args.threads}"
            print(
                f"| {family} | {setting} | {layout} | {figures['first_epoch_s']:.1f} | "
                f"{figures['img_per_s']:.0f} | {HEADLINE[family]} {figures['metric']:.4g} |"
            )


if __name__ == "__main__":
    main()
