"""Score a family's samples (and reconstructions) against the test split, with reference floors.

Every number is computed between `n` generated images and the first `n` test images, where
n = min(evaluate.num_samples, test size); the real-vs-real floors use `n` train images drawn with a
seeded generator in place of the generated ones, so a reader knows what "as good as real data" is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from genlab.data import PreparedData
from genlab.models.base import Generative
from genlab.quality.classifier import DomainClassifier, embed
from genlab.quality.frechet import fid
from genlab.quality.inception import inception_features
from genlab.quality.inception_score import inception_score
from genlab.quality.prdc import prdc
from genlab.quality.reconstruction import psnr, ssim
from genlab.runtime import stream


def sample_in_batches(
    sample: Callable[[int, torch.Generator], torch.Tensor], n: int, gen, batch_size: int
) -> torch.Tensor:
    return torch.cat([sample(min(batch_size, n - i), gen).cpu() for i in range(0, n, batch_size)])


def fid_monitor(
    classifier: DomainClassifier,
    reference: torch.Tensor,
    n: int,
    device: torch.device,
    seed: int,
    batch_size: int = 500,
) -> Callable[[object], dict[str, float]]:
    """A training-time scorer: domain FID between n samples and n reference (validation) images, or for
    a family that reconstructs but does not generate (a tokenizer), `domain_rfid` between the
    reconstructions of those images and the images themselves.

    Every call draws the same noise (a generator seeded afresh), so the curve over epochs shows the
    model changing, not the noise; the run's own generators are left untouched, so resuming is exact.
    """
    n = min(n, len(reference))
    reference = reference[:n]
    f_ref, _ = embed(classifier, reference)

    def score(family) -> dict[str, float]:
        gen = stream(seed, "fid_monitor", device)
        if isinstance(family, Generative):
            generated = sample_in_batches(family.sample, n, gen, batch_size)
            return {"domain_fid": fid(embed(classifier, generated)[0], f_ref)}
        recon = reconstruct_in_batches(family.quick_reconstruct, reference, gen, batch_size)
        return {"domain_rfid": fid(embed(classifier, recon)[0], f_ref)}

    return score


def reconstruct_in_batches(
    reconstruct: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    images: torch.Tensor,
    gen: torch.Generator,
    batch_size: int,
) -> torch.Tensor:
    """Reconstructions (on the CPU, clamped to [0, 1]) of images in [0, 1], batch by batch on gen's device."""
    out = [
        reconstruct(images[i : i + batch_size].to(gen.device), gen).clamp(0, 1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def real_pair(data: PreparedData, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(first n test images, n train images drawn without replacement by `gen`, a CPU generator),
    both in [0, 1] on the CPU."""
    pick = torch.randperm(len(data.train), generator=gen)[:n]
    return data.to_unit(data.test.images[:n]), data.to_unit(data.train.images[pick])


def domain_scores(
    classifier: DomainClassifier, generated: torch.Tensor, test: torch.Tensor, train: torch.Tensor
) -> dict[str, float]:
    """FID, IS, precision/recall (k=3) and density/coverage (k=5) in the classifier's feature space."""
    f_gen, p_gen = embed(classifier, generated)
    f_test, p_test = embed(classifier, test)
    f_train, _ = embed(classifier, train)
    scores = {
        "domain_fid": fid(f_gen, f_test),
        "domain_fid_floor": fid(f_train, f_test),
        "domain_is": inception_score(p_gen)[0],
        "domain_is_real": inception_score(p_test)[0],
    }
    scores.update(prdc(f_test, f_gen))
    return scores


def inception_fid(
    generated: torch.Tensor, test: torch.Tensor, train: torch.Tensor, weights: str | None, device
) -> dict[str, float]:
    """The standard FID on Inception-v3 pool features (299x299, grayscale copied to 3 channels)."""
    f_gen, f_test, f_train = (inception_features(x, weights, device=device).cpu() for x in (generated, test, train))
    return {"inception_fid": fid(f_gen, f_test), "inception_fid_floor": fid(f_train, f_test)}


def reconstruction_scores(
    classifier: DomainClassifier, recon: torch.Tensor, test: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Reconstructions of the test images against them: domain rFID (read it against domain_fid_floor),
    PSNR (dB) and SSIM per image then averaged, and the domain classifier's accuracy on the
    reconstructions (`recon_accuracy`, beside its accuracy on the originals, `real_accuracy`)."""
    f_rec, p_rec = embed(classifier, recon)
    f_test, p_test = embed(classifier, test)
    labels = labels.to(p_rec.device)
    return {
        "domain_rfid": fid(f_rec, f_test),
        "psnr": psnr(recon, test).mean().item(),
        "ssim": ssim(recon, test).mean().item(),
        "recon_accuracy": (p_rec.argmax(1) == labels).double().mean().item(),
        "real_accuracy": (p_test.argmax(1) == labels).double().mean().item(),
    }


def class_frequencies(classifier: DomainClassifier, images: torch.Tensor) -> np.ndarray:
    """Fraction of images the domain classifier assigns to each class (a mode-collapse indicator)."""
    probs = embed(classifier, images)[1]
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    return (counts.double() / len(images)).numpy()
