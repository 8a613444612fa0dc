"""How long the evaluate stage's sample scoring takes, and the Inception path's images/s.

    python bench/score_speed.py                      # 10,000 samples, MNIST from ../shared/datasets/mnist
    python bench/score_speed.py --n 2000 --inception 64

Times everything `genlab.quality.scoring.domain_scores` does for n generated images (here: test
images shifted by noise, standing in for a model's samples — the cost does not depend on what the
images show): classifier features and probabilities of generated, test and train images, FID and its
real-vs-real floor, IS of both, precision/recall (k=3) and density/coverage (k=5), and PSNR/SSIM of n
image pairs. The classifier keeps its random initial weights: its forward cost is what is timed.
Target (issue 3): under 30 s for n = 10,000 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from benchlib import OUT, prepared

from genlab.config import config_from_dict
from genlab.quality.classifier import build_classifier, num_classes
from genlab.quality.reconstruction import psnr, ssim
from genlab.quality.scoring import domain_scores, real_pair

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="generated images scored (default 10000)")
    parser.add_argument("--inception", type=int, default=32, help="images for the Inception images/s figure (0: skip)")
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "datasets" / "mnist")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )

    cfg = config_from_dict({"data": {"name": "mnist", "mirror": str(args.mirror), "root": str(OUT / "data")}})
    data = prepared(cfg)
    n = min(args.n, len(data.test))
    torch.manual_seed(0)
    classifier = build_classifier(cfg.classifier, data.image_shape, num_classes(data), data.max_value).to(device).eval()
    test, train = real_pair(data, n, torch.Generator().manual_seed(1))
    generated = (test + 0.1 * torch.randn(test.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)

    began = time.perf_counter()
    scores = domain_scores(classifier, generated, test, train)
    domain_s = time.perf_counter() - began
    began = time.perf_counter()
    with torch.no_grad():
        p, s = psnr(generated, test).mean().item(), ssim(generated, test).mean().item()
    recon_s = time.perf_counter() - began
    print(f"domain metrics ({', '.join(sorted(scores))}) for {n} samples: {domain_s:.1f} s")
    print(f"PSNR/SSIM for {n} pairs: {recon_s:.1f} s (psnr {p:.2f}, ssim {s:.3f})")
    print(f"total scoring time for {n} samples: {domain_s + recon_s:.1f} s (target < 30 s on 2 CPU cores)")

    if args.inception:
        from genlab.quality.inception import inception_features

        batch = test[: args.inception].to(device)
        inception_features(batch[:2], progress=False)  # loads the network once, outside the timing
        began = time.perf_counter()
        inception_features(batch, progress=False)
        seconds = time.perf_counter() - began
        print(f"inception features: {args.inception / seconds:.1f} images/s on {device} ({args.inception} images)")


if __name__ == "__main__":
    main()
