"""The floor under one training step of the seed VAE at batch 64: its matrix products and its Adam update alone.

A lower bound, not a training step: the 17 matrix products of a step (6 forward, 6 weight gradients, 5 input
gradients; the first layer's input needs none), each timed on its own with torch.mm on preallocated tensors,
plus one fused Adam update (torch.optim.Adam(fused=True), what genlab uses) over the model's 1.08 M
parameters. Everything else a step does (biases, ReLU, sigmoid and BCE, the KL, the noise, autograd's
bookkeeping, the batch gather) is left out, so a real step can only be slower. Prints each part in ms per
step, the floor, the matmul share at the floor, and what bench/vae_epoch.py's speed targets would need.

    cd /work/main && PYTHONPATH=src .venv/bin/python bench/vae_floor.py [--reference-ms 8.72]

--reference-ms: the seed loop's time per step (bench/vae_epoch.py: reference seconds / 938 batches).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

BATCH = 64
# (in, out) of the seed VAE's Linear layers as genlab builds them: encoder, one head for (mu, logvar), decoder.
LAYERS = [(784, 512), (512, 256), (256, 40), (20, 256), (256, 512), (512, 784)]
FIRST = {0}  # layers fed by the data: no input gradient


def timed(fn, repeats: int = 2000, rounds: int = 7) -> float:
    """Median over `rounds` of the mean seconds per call over `repeats` calls."""
    for _ in range(50):
        fn()
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(repeats):
            fn()
        samples.append((time.perf_counter() - began) / repeats)
    return statistics.median(samples)


def matmuls() -> list[tuple[str, float]]:
    parts = []
    for i, (n_in, n_out) in enumerate(LAYERS):
        x, w, g = torch.randn(BATCH, n_in), torch.randn(n_out, n_in), torch.randn(BATCH, n_out)
        y, gw, gx = torch.empty(BATCH, n_out), torch.empty(n_out, n_in), torch.empty(BATCH, n_in)
        wt, gt = w.t(), g.t()
        parts.append((f"fwd {n_in}->{n_out}", timed(lambda x=x, wt=wt, y=y: torch.mm(x, wt, out=y))))
        parts.append((f"grad W {n_out}x{n_in}", timed(lambda gt=gt, x=x, gw=gw: torch.mm(gt, x, out=gw))))
        if i not in FIRST:
            parts.append((f"grad x {n_out}->{n_in}", timed(lambda g=g, w=w, gx=gx: torch.mm(g, w, out=gx))))
    return parts


def adam() -> float:
    params = [torch.nn.Parameter(torch.randn(o, i)) for i, o in LAYERS] + [
        torch.nn.Parameter(torch.randn(o)) for _, o in LAYERS
    ]
    for p in params:
        p.grad = torch.randn_like(p)
    optimiser = torch.optim.Adam(params, lr=1e-3, fused=True)
    return timed(optimiser.step, repeats=500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-ms", type=float, default=8.72, help="the seed loop's ms per step")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    parts = matmuls()
    mm = sum(s for _, s in parts)
    for name, seconds in parts:
        print(f"  {name:<22} {seconds * 1e3:7.3f} ms")
    update = adam()
    floor = mm + update
    print(f"matrix products: {mm * 1e3:.3f} ms/step")
    print(f"fused Adam over {sum(i * o + o for i, o in LAYERS) / 1e6:.2f} M parameters: {update * 1e3:.3f} ms/step")
    print(f"floor (products + Adam, nothing else): {floor * 1e3:.3f} ms/step")
    print(f"matmul share at the floor: {mm / floor:.0%}")
    budget = args.reference_ms / 3
    print(
        f"3x the seed loop ({args.reference_ms:.2f} ms/step) needs <= {budget:.3f} ms/step: "
        f"{budget - floor * 1e3:+.3f} ms left for everything else"
    )
    print(f"matmul >= 70% of the step needs a step <= {mm / 0.7 * 1e3:.3f} ms: Adam alone takes {update * 1e3:.3f}")


if __name__ == "__main__":
    main()
