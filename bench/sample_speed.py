"""Sampling speed of the evaluate and sample stages, before and after issue 25.2, per sampler and step count.

Samplers (each family at its params.yaml size, MNIST's 28x28 shape; weights randomly initialised, which
changes nothing in the cost of a step): DDIM η = 0 at 10 and 50 steps (the DDPM's U-Net, EMA copy); FlowMo
decoding (`flowmo.detokenize`: 25 Euler steps, ρ = 4, guidance 1.5 in its interval; the README's MNIST
tokenizer: patch 4, 6 tokens of 9 bits); MaskGIT decoding (`maskgit.sample`: 12 parallel steps over that
tokenizer's token groups, then its FlowMo decoding).

Settings, timed interleaved in one process (median of --repeats calls after one warm-up; img/s = images of one
call / its seconds):

* before   — what the stages did before: fp32, `torch.no_grad` (the samplers' own decorators), the deterministic
             mode's NaN fill of every fresh tensor, the U-Net on the whole batch (the doc's figure: batch 64);
* fp32     — `genlab.core.inference.sampling("fp32")`, the stages' context now: inference mode, no fill; on a
             CPU the U-Net in chunks of 64 (`genlab.models.ddpm.family.CPU_SAMPLE_CHUNK`); at batch 64 its
             images must equal `before`'s bit for bit (printed as `same`), at 256 they differ by float rounding;
* bf16     — that context with bf16 autocast (`sample.precision=bf16` on a CPU; `bf16+cl`: with channels-last
             weights, what it does on CUDA), forced here even on a CPU the stages refuse it on (no
             AVX512-BF16/AMX: emulated);
             printed with the largest and the mean absolute pixel difference from fp32 on the same noise;
* compile  — fp32 with the networks under torch.compile (`sample.compile=true`); its compile seconds apart;
* bf16+compile, bf16+cl+compile — both (`sample.precision=bf16 sample.compile=true`: the first on a CPU).

--profile times one U-Net call on 64 images (t = 500) per setting under torch.profiler and splits its CPU time into
convolutions (with their GFLOP/s, against a 2048^3 matmul's in fp32 and bf16), attention products, linear layers
and the rest (GroupNorm, SiLU, adds, concatenations; under compile, the generated kernels they fuse into): where
the DDIM step's time goes, and what item 2's 3x would leave the rest.

--every-setting times every setting at every --batches size: `--batches 250 --every-setting` is the evaluate
stage's call (evaluate.batch_size images at a time) at the batch the issue's 3.8 img/s was measured at (§7).

--quality trains the default digits DDPM for --epochs and scores --samples DDIM samples (50 steps) in fp32 and
in bf16 from the same noise with the domain classifier: the shift bf16 makes in domain FID/IS/precision/recall.

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/sample_speed.py [--device auto] [--threads N]
        [--samplers ddim10 ddim50 flowmo maskgit] [--batches 64 256] [--every-setting] [--quality] [--profile]
        [--settings before fp32 bf16 bf16+cl compile bf16+compile bf16+cl+compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import statistics
import sys
import time

import genlab  # noqa: F401  (first: it sets OpenMP's spin count, read when torch loads)

# isort: split
import torch
from benchlib import build, classifier_for, prepared, switches, train
from torch.utils.flop_counter import FlopCounterMode
from vae_epoch import matmul_gflops

from genlab.config.experiment import config_from_dict
from genlab.core.inference import bf16_unsupported, cpu_bf16_units, no_fill
from genlab.core.runtime import resolve_device, seed_everything, stream
from genlab.evaluation.scoring import image_scores, real_pair, sample_in_batches
from genlab.models import DataSpec, build_family
from genlab.training.loop import compile_networks

MNIST = (1, 28, 28)
SETTINGS = ("before", "fp32", "bf16", "bf16+cl", "compile", "bf16+compile", "bf16+cl+compile")
FLOWMO_MNIST = {"patch": 4, "tokens": 6, "bits": 9, "group": 9}  # the README's MNIST tokenizer


def families(device: torch.device):
    """{sampler: (family, step label)}: the DDPM and the FlowMo + MaskGIT pair at their params.yaml sizes."""
    cfg = config_from_dict({"seed": 0, "device": str(device), "model": {"family": "ddpm"}, "flowmo": FLOWMO_MNIST})
    seed_everything(0, "model_init")
    ddpm = build_family("ddpm", cfg.ddpm, DataSpec(MNIST, 256), device)
    flowmo = build_family("flowmo", cfg.flowmo, DataSpec(MNIST, 256), device)
    maskgit = build_family("maskgit", cfg.maskgit, DataSpec(MNIST, 256), device)
    maskgit.attach("tokenizer", flowmo)
    for fam in (ddpm, flowmo, maskgit):
        fam.train(False)
    return ddpm, flowmo, maskgit


def sampler(name: str, ddpm, flowmo, maskgit, before: bool = False):
    """(family, images of n from generator gen, label): the call the stages make for that sampler (`before`:
    the DDPM's U-Net on the whole batch at once, as before CPU_SAMPLE_CHUNK)."""
    if name.startswith("ddim"):
        steps = int(name[4:])
        fam = copy.copy(ddpm)  # the same networks, its own sampler_steps
        fam.cfg = dataclasses.replace(ddpm.cfg, sampler_steps=steps)
        if before:
            fam.chunk = None
        return fam, fam.sample, f"DDIM {steps} steps"
    if name == "flowmo":
        cfg = flowmo.cfg

        def decode(n, gen):
            tokens = torch.randint(0, flowmo.vocabulary, (n, flowmo.sequence_length), generator=gen)
            return flowmo.detokenize(tokens.to(flowmo.device), gen)

        return flowmo, decode, f"FlowMo decode {cfg.sampler_steps} steps"
    return maskgit, maskgit.sample, f"MaskGIT decode {maskgit.cfg.decode_steps} steps + FlowMo"


def setting_context(setting: str, device: torch.device):
    if setting == "before":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(no_fill())
    if "bf16" in switches(setting):
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack


def networks_for(fam, setting: str):
    """A copy of the family with its networks (and its tokenizer's) as the setting wants them."""
    parts = switches(setting)
    if not parts & {"cl", "compile"}:
        return fam
    fam = copy.deepcopy(fam)
    tokenizer = getattr(fam, "tokenizer", None)
    for f in [fam] + ([tokenizer] if tokenizer is not None else []):
        for module in f.modules.values():
            if "cl" in parts:
                module.to(memory_format=torch.channels_last)
            if "compile" in parts:
                compile_networks(module)
    return fam


def measure(name: str, nets, settings: list[str], batch: int, repeats: int, device: torch.device) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls, label = {}, None
    for setting in settings:
        _, calls[setting], label = sampler(name, *[networks_for(f, setting) for f in nets], setting == "before")
    times: dict[str, list[float]] = {s: [] for s in settings}
    images: dict[str, torch.Tensor] = {}

    def call(setting: str) -> float:
        gen = stream(0, "sample_speed", device)  # the same noise in every setting
        with setting_context(setting, device):
            began = time.perf_counter()
            out = calls[setting](batch, gen)
            sync()
            seconds = time.perf_counter() - began
        images[setting] = out.float().cpu()
        return seconds

    for setting in settings:  # warm-up (and compilation)
        seconds = call(setting)
        if "compile" in switches(setting):
            print(f"  {label}: {setting} + first call {seconds:.1f} s", flush=True)
    for _ in range(repeats):
        for setting in settings:
            times[setting].append(call(setting))
    base = statistics.median(times[settings[0]])
    reference = images.get("fp32", images[settings[0]])
    for setting in settings:
        median = statistics.median(times[setting])
        diff = (images[setting] - reference).abs()
        note = ""
        if setting == "fp32" and "before" in images:
            apart = (images["fp32"] - images["before"]).abs().max().item()
            note = "same as before" if apart == 0 else f"vs before: max |Δ| {apart:.1e} (float rounding)"
        elif setting != "fp32":
            note = f"vs fp32: max |Δ| {diff.max().item():.4f}, mean |Δ| {diff.mean().item():.5f}"
        print(
            f"{label:<36} {setting:<15} batch {batch:>4}: {batch / median:8.2f} img/s  ×{base / median:4.2f}  "
            f"({', '.join(f'{t:.2f}' for t in times[setting])} s)  {note}",
            flush=True,
        )


def op_kind(name: str) -> str:
    """The part of a U-Net call a profiled op belongs to (by its aten name)."""
    if "convolution" in name:
        return "conv"
    if any(k in name for k in ("bmm", "softmax", "attention")):
        return "attention"
    return "linear" if any(k in name for k in ("addmm", "aten::mm", "linear")) else "rest"


def profile(ddpm, settings: list[str], device: torch.device, batch: int = 64, calls: int = 5) -> None:
    """Where one U-Net call's time goes per setting: convolutions (and their GFLOP/s) against the rest."""
    x = torch.randn(batch, *MNIST, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((batch,), 500, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ddpm.ema(x, t)
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    peaks = {dtype: matmul_gflops(device, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    fp32, bf16 = peaks.values()
    print(
        f"profile: one U-Net call on {batch} images: {counter.get_total_flops() / 1e9:.1f} GFLOP, convolutions "
        f"{conv_flops / 1e9:.1f}; matmul 2048^3: fp32 {fp32:.0f}, bf16 {bf16:.0f} GFLOP/s"
    )
    cuda = device.type == "cuda"  # there the kernels' own time is the device's, the CPU only launches them
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    own_time = "self_device_time_total" if cuda else "self_cpu_time_total"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for setting in settings:
        net = networks_for(ddpm, setting).ema
        with torch.no_grad(), setting_context(setting, device):  # no_grad: `before`'s sampler decorators
            for _ in range(3):  # warm-up (and compilation)
                net(x, t)
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(calls):
                    net(x, t)
                sync()
        parts = dict.fromkeys(("conv", "attention", "linear", "rest"), 0.0)
        for event in prof.key_averages():
            parts[op_kind(event.key)] += getattr(event, own_time) / 1e3 / calls  # ms per call
        total = sum(parts.values())
        peak = peaks[torch.bfloat16 if "bf16" in switches(setting) else torch.float32]
        conv_rate = conv_flops / (parts["conv"] / 1e3) / 1e9
        print(
            f"profile {setting:<15} {total:6.1f} ms a call: convolutions {parts['conv']:5.1f} ms "
            f"({parts['conv'] / total:4.0%}; {conv_rate:4.0f} GFLOP/s = {conv_rate / peak:4.0%} of the matmul), "
            + ", ".join(f"{k} {parts[k]:4.1f} ms ({parts[k] / total:3.0%})" for k in ("attention", "linear", "rest")),
            flush=True,
        )


def quality(args, device: torch.device) -> None:
    """The bf16 shift of the digits DDPM's sample metrics: same model, same noise, fp32 vs bf16."""
    cfg = config_from_dict(
        {
            "seed": 0,
            "device": str(device),
            "model": {"family": "ddpm"},
            "train": {"epochs": args.epochs, "batch_size": 64, "lr_schedule": "constant"},
        }
    )
    data = prepared(cfg)
    classifier = classifier_for(data, cfg, device)
    family = build(cfg, data, device)
    began = time.perf_counter()
    train(cfg, data, family)
    print(f"quality: digits DDPM trained {args.epochs} epochs in {time.perf_counter() - began:.0f} s", flush=True)
    family.train(False)
    n = min(args.samples, len(data.test))
    test, train_images = real_pair(data, n, stream(cfg.seed, "real_train_pick"))
    train_all = data.to_unit(data.train.images)
    generated = {}
    for setting in ("fp32", "bf16"):
        with setting_context(setting, device):
            began = time.perf_counter()
            generated[setting] = sample_in_batches(family.sample, n, stream(cfg.seed, "eval_samples", device), 256)
        seconds = time.perf_counter() - began
        scores = image_scores(
            classifier, test, cfg.seed, 0, train=train_images, train_all=train_all, generated=generated[setting]
        )
        print(
            f"quality {setting}: {n} DDIM samples, 50 steps ({seconds:.0f} s): domain FID {scores['domain_fid']:.3f} "
            f"(floor {scores['domain_fid_floor']:.2f}), KID {scores['domain_kid']:.5f}, IS {scores['domain_is']:.3f}, "
            f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, density {scores['density']:.3f}, "
            f"coverage {scores['coverage']:.3f}",
            flush=True,
        )
    diff = (generated["bf16"].float() - generated["fp32"]).abs()
    print(f"quality: bf16 vs fp32 pixels: max |Δ| {diff.max().item():.4f}, mean |Δ| {diff.mean().item():.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--samplers", nargs="*", default=["ddim10", "ddim50", "flowmo", "maskgit"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256], help="images per call after")
    parser.add_argument(
        "--every-setting",
        action="store_true",
        help="time every --settings at every batch (else only before and fp32 past 64, and no DDIM 50 on a CPU there)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", action="store_true", help="the bf16 shift of a digits DDPM's metrics")
    parser.add_argument("--profile", action="store_true", help="where one U-Net call's time goes, per setting")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=359)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    units = cpu_bf16_units() or ["none"]
    why = bf16_unsupported(device)
    print(
        f"torch {torch.__version__}, device {device}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"CPU {torch.cpu.get_capabilities().get('cpu_name')} ({torch.backends.cpu.get_cpu_capability()} kernels; "
        f"bf16 units: {', '.join(units)}); sample.precision=bf16 {'refused: ' + why if why else 'allowed'}"
    )
    nets = families(device)
    if args.profile:
        profile(nets[0], args.settings, device)
    for name in args.samplers:
        for batch in args.batches:
            # The old settings only at the old batch; the other batches show what batching adds.
            settings = args.settings
            if batch != 64 and not args.every_setting:
                if device.type == "cpu" and name == "ddim50":
                    continue  # 28x28, 50 steps: a minute a call on 2 cores; the 10-step rows show the batch effect
                settings = [s for s in args.settings if s in ("before", "fp32")]
            measure(name, nets, settings, batch, args.repeats, device)
    if args.quality:
        quality(args, device)


if __name__ == "__main__":
    main()
