"""FlowMo's claim at small scale: at equal bits per pixel, does a diffusion decoder with mode-seeking
post-training reconstruct better than regression decoders? (Sargent et al. 2025, seed 004.)

Every variant has the same encoder, LFQ quantiser and decoder network (genlab's `flowmo` family), the same
data passes and the same batch size; they differ only in what the decoder is trained to do:

    B0   regression decoder (one pass from the code), MSE
    B1   B0 + the perceptual loss (weight 0.1)
    B2   B1 + a hinge GAN loss against a spectral-norm critic (weight 0.01: at 0.1 the critic wins)
    F1   flow decoder after stage 1A (flow matching + perceptual loss)
    F1'  F1 continued in stage 1A for as many images as 1B sees (the control for extra training)
    F2   F1 then stage 1B: mode-seeking post-training through the 8-step sampler, encoder frozen

Stage 1A runs --epochs epochs over MNIST's 54k training images; the post phase (1B for F2, more 1A for
F1', more of the same for B0-B2) sees --post-images more, so all variants except F1 see the same images.
Each is scored on the first --test MNIST test images: domain rFID (reconstructions vs originals in the
domain classifier's features; floor = train vs test images), PSNR, SSIM, the perceptual distance, and
the domain classifier's accuracy on the reconstructions; mean ± sd over --seeds. Then cheap ablations
of F2's sampler (no retraining): rho in {1, 2, 4, 8} and no guidance; --logit-normal adds F2 trained on
the plain logit-normal t (no 10 % uniform share). Speed: training images/s in 1A and 1B, decoding
images/s at 1, 5 and 25 sampler steps.

Anchors are ImageNet 256x256 (FlowMo-Lo 0.070 BPP: rFID 0.95, PSNR 22.07; FlowMo-Hi 0.219 BPP: rFID 0.56,
PSNR 24.93; post-training: rFID -14 to -23 %, PSNR +0.7 to 0.9 dB): not comparable in scale.

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/flowmo_claim.py --prepare   # data + both networks, once
    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/flowmo_claim.py \\
        --seed 0 > bench/out/flowmo_claim_s0.log 2>&1 &      # one process per seed (2 cores: two at once)
    PYTHONPATH=src .venv/bin/python bench/flowmo_claim.py --table        # the table from bench/out/*.jsonl
    PYTHONPATH=src .venv/bin/python bench/flowmo_claim.py --speed        # images/s (idle machine; GPU: --device cuda)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from benchlib import OUT, build, classifier_for, prepared

from genlab.config.experiment import config_from_dict
from genlab.core import checkpoint
from genlab.core.runtime import resolve_device, stream
from genlab.evaluation.classifier import build_classifier
from genlab.evaluation.scoring import image_scores, real_pair, reconstruct_in_batches
from genlab.models.classifier import embed
from genlab.models.flowmo.family import FlowMo
from genlab.processes import rectified_flow as rf
from genlab.quality.frechet import fid
from genlab.training.loop import NullTracker, Optimisation, fit
from genlab.training.sources import Source, image_source

VARIANTS = {
    "B0": {"decoder": "regression", "perceptual_weight": 0.0},
    "B1": {"decoder": "regression"},
    "B2": {"decoder": "regression", "adversarial_weight": 0.01},
}
COLUMNS = ["domain_rfid", "psnr", "ssim", "perceptual", "recon_accuracy"]
RESULTS = OUT / "flowmo_claim.jsonl"


def make_config(args, seed: int, **flowmo):
    tokens = args.tokens
    return config_from_dict(
        {
            "seed": seed,
            "device": args.device,
            "data": {"name": "mnist", "root": "bench/out/data", "mirror": args.mirror},
            "model": {"family": "flowmo"},
            "flowmo": {
                "patch": 4,
                "tokens": tokens,
                "bits": args.bits,
                "group": args.bits,
                "encoder_width": args.width,
                "decoder_width": args.width,
                "encoder_depth": 2,
                "decoder_depth": 3,
                "pretrain_epochs": args.epochs,
                "eval_every": 0,
                "lr": 5e-4,  # §6's table was measured at the family's default of then (now 2e-3, §16)
                **flowmo,
            },
            "train": {"epochs": args.epochs, "batch_size": 64, "lr_schedule": "constant"},
            "perceptual": {"epochs": 3},
        }
    )


VAL_IMAGES = 500  # the loop's per-epoch validation (sampled reconstructions, the 8-step chain) on a slice


def sources(data, n_train: int, n_post: int, seed: int) -> tuple[Source, Source]:
    """(stage 1A's, the post phase's): the post phase's images drawn with a seeded permutation, 1A's all
    training images or n_train of them; both validate on the first VAL_IMAGES validation images."""
    full = image_source(data, "none")

    def pick(n: int, purpose: str) -> torch.Tensor:
        return full.train[torch.randperm(len(full.train), generator=stream(seed, purpose))[:n]]

    pretrain = pick(n_train, "bench_train_images") if n_train else full.train
    return (
        Source(pretrain, full.val[:VAL_IMAGES], full.test, full.to_input),
        Source(pick(n_post, "bench_post_images"), full.val[:VAL_IMAGES], full.test, full.to_input),
    )


def run_phase(family, source, cfg, epochs: int, ckpt: Path, state=None) -> float:
    """fit() for `epochs` epochs in all (resuming `state`); returns train images/s."""
    train = dataclasses.replace(cfg.train, epochs=epochs)
    began = time.perf_counter()
    history = fit(
        family, source, train, cfg.seed, key="bench", checkpoint_path=ckpt, tracker=NullTracker(), resume_state=state
    )
    seen = len(source.train) * (epochs - (state["epoch"] if state else 0))
    print(f"  epoch {history[-1]['epoch']}: train flow/MSE {history[-1]['train_flow']:.4f}", flush=True)
    return seen / (time.perf_counter() - began)


def score(family: FlowMo, test, labels, classifier, seed: int, **sampler) -> dict[str, float]:
    """Reconstruction metrics of the test images, as evaluate computes them (sampler overrides allowed)."""
    family.train(False)
    cfg = family.cfg
    settings = {
        "steps": cfg.sampler_steps,
        "rho": cfg.rho,
        "guidance": cfg.guidance,
        "interval": family.sigmas,
        **sampler,
    }

    def reconstruct(x, gen):
        return family.decode(family.codes(x), gen, **settings)

    recon = reconstruct_in_batches(reconstruct, test, stream(seed, "bench_reconstructions", family.device), 250)
    scores = image_scores(classifier, test, seed, 0, recon=recon, labels=labels)
    return {**scores, **family.reconstruction_distances(recon, test)}


def decode_speed(family: FlowMo, test) -> dict[str, float]:
    x, out = test[:256].to(family.device), {}
    q = family.codes(x)
    for steps in (1, 5, 25):
        began = time.perf_counter()
        family.decode(
            q, torch.Generator(family.device).manual_seed(0), steps, rf.RHO, rf.GUIDANCE, rf.GUIDANCE_INTERVAL
        )
        out[f"decode_{steps}_steps_img_s"] = len(x) / (time.perf_counter() - began)
    return out


def speed(args) -> None:
    """Training images/s in 1A and 1B (batch 64) and decoding images/s at 1, 5 and 25 steps, on random
    MNIST-shaped images with untrained networks: the bench's model at its size, on this machine now."""
    device = resolve_device(args.device)
    cfg = make_config(args, 0, pretrain_epochs=1)
    family = build(cfg, prepared(cfg), device)
    for needed in family.upstream:
        family.attach(needed.name, build_classifier(cfg.perceptual, (1, 28, 28), 10, 255).to(device).train(False))
    update = Optimisation(family, cfg.train).update
    x, gen = torch.rand(64, 1, 28, 28, device=device), torch.Generator(device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for epoch, stage in ((1, "1A"), (2, "1B")):
        family.train(True)
        family.train_step(x, epoch, gen, update)  # warm-up
        sync()
        began = time.perf_counter()
        for _ in range(args.speed_steps):
            family.train_step(x, epoch, gen, update)
        sync()
        print(
            f"speed: training {stage}: {64 * args.speed_steps / (time.perf_counter() - began):.0f} images/s (batch 64)"
        )
    family.train(False)
    for name, value in decode_speed(family, x.repeat(4, 1, 1, 1)).items():
        print(f"speed: {name.replace('_img_s', '').replace('_', ' ')}: {value:.0f} images/s (batch 256)")


def record(row: dict) -> None:
    print(json.dumps(row), flush=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def run_seed(args, seed: int) -> None:
    device = resolve_device(args.device)
    # The split and the two networks are seed 0's for every seed (as `make expected` keeps the split): a
    # seed changes only the training, and every variant of every seed is judged by the same classifier.
    base = make_config(args, 0)
    data = prepared(base)
    classifier = classifier_for(data, base, device)
    perceptual = classifier_for(data, base, device, "perceptual")
    test, train_pick = real_pair(data, args.test, stream(0, "real_train_pick"))
    labels = data.test.labels[: args.test]
    pretrain, post = sources(data, args.train_images, args.post_images, seed)
    post_epochs = args.epochs + 1
    floor = fid(embed(classifier, train_pick)[0], embed(classifier, test)[0])
    tag = {
        "seed": seed,
        "bpp": args.tokens * args.bits / 784,
        "epochs": args.epochs,
        "post_images": args.post_images,
        "rfid_floor": floor,
    }
    work = OUT / f"flowmo_claim_s{seed}_{args.tokens}x{args.bits}"
    work.mkdir(parents=True, exist_ok=True)

    def family_for(**overrides) -> FlowMo:
        family = build(make_config(args, seed, **overrides), data, device)
        family.attach("classifier", classifier)
        family.attach("perceptual", perceptual)
        return family

    for name, overrides in VARIANTS.items():
        if name not in args.variants:
            continue
        if name == "B2":
            overrides = {**overrides, "adversarial_weight": args.adversarial_weight}
        cfg = make_config(args, seed, **overrides)
        family = family_for(**overrides)
        print(f"{name} seed {seed}", flush=True)
        speed = run_phase(family, pretrain, cfg, args.epochs, work / f"{name}.pt")
        run_phase(family, post, cfg, post_epochs, work / f"{name}.pt", checkpoint.load(work / f"{name}.pt"))
        label = f"B2 (adversarial {args.adversarial_weight:g})" if name == "B2" else name
        record({"variant": label, **tag, "train_img_s": speed, **score(family, test, labels, classifier, seed)})

    schedules = {"F": {}, **({"F-ln": {"uniform_share": 0.0}} if args.logit_normal else {})}
    schedules = {k: v for k, v in schedules.items() if "F" in args.variants}
    for prefix, overrides in schedules.items():
        cfg = make_config(args, seed, **overrides)
        family = family_for(**overrides)
        print(f"{prefix}1 seed {seed}", flush=True)
        speed = run_phase(family, pretrain, cfg, args.epochs, work / f"{prefix}1.pt")
        state = checkpoint.load(work / f"{prefix}1.pt")
        if prefix == "F":
            record(
                {
                    "variant": "F1",
                    **tag,
                    "train_img_s": speed,
                    **score(family, test, labels, classifier, seed),
                    **decode_speed(family, test),
                }
            )
            control = family_for(pretrain_epochs=post_epochs)  # F1': stage 1A through the post phase too
            run_phase(control, post, cfg, post_epochs, work / "F1c.pt", state)
            record({"variant": "F1'", **tag, **score(control, test, labels, classifier, seed)})
        print(f"{prefix}2 seed {seed}", flush=True)
        post_speed = run_phase(family, post, cfg, post_epochs, work / f"{prefix}1.pt", state)
        record(
            {"variant": f"{prefix}2", **tag, "post_img_s": post_speed, **score(family, test, labels, classifier, seed)}
        )
        if prefix == "F":
            for rho in (1.0, 2.0, 8.0):
                record({"variant": f"F2 rho {rho:g}", **tag, **score(family, test, labels, classifier, seed, rho=rho)})
            record({"variant": "F2 no guidance", **tag, **score(family, test, labels, classifier, seed, guidance=1.0)})


def table() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((round(row["bpp"], 4), row["variant"]), []).append(row)
    print("| BPP | variant | seeds | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for (bpp, variant), items in groups.items():
        cells = []
        for col in COLUMNS:
            values = [r[col] for r in items]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
        print(f"| {bpp:.3f} | {variant} | {len(items)} | " + " | ".join(cells) + " |")
    for key in ("train_img_s", "post_img_s", "decode_1_steps_img_s", "decode_5_steps_img_s", "decode_25_steps_img_s"):
        values = [r[key] for r in rows if key in r]
        if values:
            print(f"{key}: median {statistics.median(values):.1f} over {len(values)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=2, help="stage 1A epochs over MNIST's training split")
    parser.add_argument("--post-images", type=int, default=4096, help="images of the post phase (1B for F2)")
    parser.add_argument("--train-images", type=int, default=0, help="stage 1A on this many images (0 = all 54k)")
    parser.add_argument("--tokens", type=int, default=6, help="6 x 9 bits = 0.069 BPP; 19 x 9 = 0.218")
    parser.add_argument("--bits", type=int, default=9)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--test", type=int, default=1000, help="MNIST test images scored")
    parser.add_argument("--logit-normal", action="store_true", help="also F2 trained on the plain logit-normal t")
    parser.add_argument("--variants", nargs="+", default=["B0", "B1", "B2", "F"], help="F: F1, F1', F2 (+ ablations)")
    parser.add_argument("--adversarial-weight", type=float, default=0.01, help="B2's hinge GAN weight (0.1 collapses)")
    parser.add_argument("--table", action="store_true", help="print the table of bench/out/flowmo_claim.jsonl")
    parser.add_argument("--prepare", action="store_true", help="only prepare MNIST and train the two networks once")
    parser.add_argument("--speed", action="store_true", help="only the speed figures (use an idle machine)")
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--mirror", default="../shared/datasets/mnist", help="directory holding the four MNIST .gz files"
    )
    args = parser.parse_args()
    if args.table:
        table()
        return
    if args.speed:
        speed(args)
        return
    sys.stdout.reconfigure(line_buffering=True)
    if args.prepare:  # before parallel seed runs, so that they do not train the same cached networks at once
        cfg = make_config(args, 0)
        data = prepared(cfg)
        (
            classifier_for(data, cfg, resolve_device(args.device)),
            classifier_for(data, cfg, resolve_device(args.device), "perceptual"),
        )
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, device {args.device}")
    for seed in args.seed:
        run_seed(args, seed)


if __name__ == "__main__":
    main()
