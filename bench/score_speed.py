"""How long the evaluate stage's sample scoring takes, and the Inception path's images/s.

    python bench/score_speed.py                      # 10,000 samples, MNIST from ../shared/datasets/mnist
    python bench/score_speed.py --n 2000 --inception 64

Times everything `genlab.evaluation.scoring.image_scores` does for n generated images and n
reconstructions (here: test images shifted by noise, standing in for a model's output — the cost does
not depend on what the images show): classifier features of generated, test, train and every training
image, FID, FID∞, KID and their floors, IS, precision/recall/density/coverage, the memorisation check,
rFID/rKID, PSNR/SSIM, and all of it again in each of `--bootstrap` resamples. The classifier keeps its
random initial weights: its forward cost is what is timed.
Target (issue 3): under 30 s for n = 10,000 on 2 CPU cores without spreads (--bootstrap 0).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from benchlib import OUT, prepared

from genlab.config.experiment import config_from_dict
from genlab.evaluation.classifier import build_classifier, num_classes
from genlab.evaluation.scoring import image_scores, real_pair

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="generated images scored (default 10000)")
    parser.add_argument("--bootstrap", type=int, default=50, help="resamples behind the spreads (default 50)")
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

    labels = data.test.labels[:n]
    train_all = data.to_unit(data.train.images)
    began = time.perf_counter()
    scores = image_scores(
        classifier,
        test,
        0,
        args.bootstrap,
        train=train,
        train_all=train_all,
        generated=generated,
        recon=generated,
        labels=labels,
    )
    seconds = time.perf_counter() - began
    print(f"{len(scores)} numbers ({', '.join(sorted(scores))})")
    print(
        f"total scoring time for {n} samples and {n} reconstructions, {args.bootstrap} resamples: {seconds:.1f} s "
        "(target < 30 s on 2 CPU cores without resamples)"
    )

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
