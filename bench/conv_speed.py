"""Training speed of the conv families (GAN, DDPM) on MNIST against the machine's matmul pace, per variant.

For each family: the conv/matmul FLOPs of one training step (torch.utils.flop_counter over forward and backward
of every network the step runs, per image), then training images/s over `--batches` steps of batch 64 after
`--warmup` steps, for each variant, as achieved GFLOP/s and as a share of a 2048^3 fp32 matmul's GFLOP/s:

  default        float32, contiguous NCHW, eager: the DDPM as `dvc repro train` runs it, the GAN as it ran
                 before it trained channels-last (Family.channels_last, from this comparison)
  channels_last  networks and batches in channels-last memory format (oneDNN's preferred conv layout)
  bf16           autocast to bfloat16 (only where the CPU has AVX512-BF16/AMX, or on CUDA; skipped otherwise)
  compile        torch.compile of the family's networks (train.compile=true; its compile time is reported apart)
  bf16+cl, bf16+compile, bf16+cl+compile
                 the combinations (bf16: `-S train.precision=bf16`; compile: `-S train.compile=true`)

Each variant trains a fresh model from the same seed on the same batches; nothing is asserted.

    cd /work/main && PYTHONPATH=src:bench .venv/bin/python bench/conv_speed.py --family gan ddpm
    cd /work/main && PYTHONPATH=src:bench .venv/bin/python bench/conv_speed.py --device cuda   # a GPU machine
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from benchlib import build, prepared, switches
from torch.utils.flop_counter import FlopCounterMode
from vae_epoch import cpu_model, matmul_gflops, sync

from genlab.config.experiment import config_from_dict
from genlab.config.params_file import parse_params
from genlab.core.inference import bf16_unsupported
from genlab.core.runtime import resolve_device, stream
from genlab.training.loop import Optimisation, compile_networks, precision_context
from genlab.training.sources import image_source

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "channels_last", "bf16", "compile", "bf16+cl", "bf16+compile", "bf16+cl+compile")


def config(family: str, device: torch.device, variant: str):
    raw = parse_params((ROOT / "params.yaml").read_text())
    raw["model"]["family"], raw["device"] = family, str(device)
    raw["data"].update(name="mnist", mirror=str(ROOT.parent / "shared" / "datasets" / "mnist"), limit=4000)
    raw["train"]["precision"] = "bf16" if "bf16" in switches(variant) else "fp32"
    return config_from_dict(raw)


def step_flops(family, x: torch.Tensor, optimisation: Optimisation) -> int:
    """Conv and matmul FLOPs of one training step (every network's forward and backward), per image."""
    with FlopCounterMode(display=False) as counter:
        family.train_step(x, 1, stream(0, "flops", x.device), optimisation.update)
    return counter.get_total_flops() // len(x)


def measure(family_name: str, device: torch.device, variant: str, batches: int, warmup: int) -> dict:
    cfg = config(family_name, device, variant)
    data = prepared(cfg)
    family = build(cfg, data, device)
    source = image_source(data, cfg.data.binarize)
    layout = torch.channels_last if "cl" in switches(variant) else torch.contiguous_format
    for module in family.modules.values():
        module.to(memory_format=layout)
    began = time.perf_counter()
    if "compile" in switches(variant):
        for module in family.modules.values():
            compile_networks(module)
    optimisation = Optimisation(family, cfg.train)
    gen = stream(cfg.seed, "noise", device)
    bs, n = cfg.train.batch_size, len(data.train)
    order = torch.randperm(n, generator=stream(cfg.seed, "order"))

    def step(k: int) -> None:
        idx = order[(k * bs) % (n - bs) :][:bs]
        x = source.to_input(data.train.images[idx].to(device), gen).contiguous(memory_format=layout)
        with precision_context(cfg.train.precision, device):
            family.train_step(x, 1, gen, optimisation.update)

    family.train(True)
    for k in range(warmup):
        step(k)
    sync(device)
    warm = time.perf_counter() - began
    began = time.perf_counter()
    for k in range(warmup, warmup + batches):
        step(k)
    sync(device)
    seconds = time.perf_counter() - began
    x = source.to_input(data.train.images[:bs].to(device), gen)
    return {"img_s": batches * bs / seconds, "flops": step_flops(family, x, optimisation), "warm_s": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["gan", "ddpm"], choices=["gan", "ddpm"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    peak = matmul_gflops(device)
    print(f"{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {device}; "
          f"matmul 2048^3 fp32 {peak:.1f} GFLOP/s")  # fmt: skip
    print("| family | variant | train img/s | vs default | MFLOP/img (fwd+bwd) | GFLOP/s | of matmul | warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for family in args.family:
        base = None
        for variant in args.variants:
            if "bf16" in switches(variant) and bf16_unsupported(device):
                print(f"| {family} | {variant} | skipped: no AVX512-BF16/AMX on this CPU | | | | | |", flush=True)
                continue
            r = measure(family, device, variant, args.batches, args.warmup)
            base = base or r["img_s"]
            gflops = r["img_s"] * r["flops"] / 1e9
            print(f"| {family} | {variant} | {r['img_s']:.1f} | {r['img_s'] / base:.2f}x | {r['flops'] / 1e6:.1f} "
                  f"| {gflops:.1f} | {gflops / peak:.1%} | {r['warm_s']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
