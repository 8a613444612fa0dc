"""Score a family's samples (and reconstructions) against the test split, with reference floors.

Every number is computed between `n` generated images and the first `n` test images, where
n = min(evaluate.num_samples, test size); the real-vs-real floors use `n` train images drawn with a
seeded generator in place of the generated ones, so a reader knows what "as good as real data" is.
Each `*_statistics` function embeds its images once and returns the metrics of a resample of them,
which genlab.quality.bootstrap.with_spreads turns into values with spreads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from genlab.core.runtime import stream
from genlab.data import PreparedData
from genlab.models.base import Generative
from genlab.models.classifier import DomainClassifier, embed
from genlab.quality.bootstrap import Indices, fid_infinity, with_spreads
from genlab.quality.frechet import fid
from genlab.quality.inception import inception_features
from genlab.quality.inception_score import inception_score
from genlab.quality.kid import mmd2_unbiased
from genlab.quality.memorisation import copy_scores, nearest_distances
from genlab.quality.prdc import prdc
from genlab.quality.reconstruction import psnr, ssim

# Metrics of one bootstrap resample: {set name: indices into it, None for the whole set} -> {metric: value}.
Statistics = Callable[[Indices], dict[str, float]]


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
    reconstructions of those images and the images themselves, and their mean `psnr` (dB): a sampled
    reconstruction costs as much as several training steps, so it is made when scored, not every epoch.

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
        return {"domain_rfid": fid(embed(classifier, recon)[0], f_ref), "psnr": psnr(recon, reference).mean().item()}

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


def _at(x: torch.Tensor, ix: torch.Tensor | None) -> torch.Tensor:
    return x if ix is None else x[ix]


def _distances(space: str, suffix: str, a, b, ia, ib, paired: bool = False) -> dict[str, float]:
    """FID and KID between feature sets a and b, each taken at its resample's indices (None: whole);
    paired: a_i reconstructs b_i (see mmd2_unbiased)."""
    x, y = _at(a, ia), _at(b, ib)
    return {f"{space}_fid{suffix}": fid(x, y), f"{space}_kid{suffix}": mmd2_unbiased(x, y, ia, ib, paired=paired)}


def floor_statistics(space: str, f_test: torch.Tensor, f_train: torch.Tensor) -> Statistics:
    """`<space>_fid_floor`, `<space>_kid_floor`: n train against the n test images, what "as good as real" is."""
    return lambda ix: _distances(space, "_floor", f_train, f_test, ix["train"], ix["test"])


def generated_statistics(f_gen, p_gen, f_test, p_test, to_train_gen, to_train_test) -> Statistics:
    """FID, KID, IS (and the test images' IS), precision/recall (k=3), density/coverage (k=5) of generated
    against test features, and the memorisation check from each image's distance to the training set."""

    def statistics(ix: Indices) -> dict[str, float]:
        g, t = ix["generated"], ix["test"]
        out = _distances("domain", "", f_gen, f_test, g, t)
        out["domain_is"] = inception_score(_at(p_gen, g))[0]
        out["domain_is_real"] = inception_score(_at(p_test, t))[0]
        out.update(prdc(_at(f_test, t), _at(f_gen, g), real_ids=t, fake_ids=g))
        out.update(copy_scores(_at(to_train_gen, g), _at(to_train_test, t)))
        return out

    return statistics


def reconstruction_statistics(f_rec, p_rec, f_test, p_test, recon, test, labels) -> Statistics:
    """Reconstructions of the test images against them, resampled in pairs: domain rFID and rKID (read them
    against the floors), PSNR (dB) and SSIM per image then averaged, and the domain classifier's accuracy on
    the reconstructions (`recon_accuracy`, beside its accuracy on the originals, `real_accuracy`)."""
    labels = labels.to(p_rec.device)
    per_image = {
        "psnr": psnr(recon, test),
        "ssim": ssim(recon, test),
        "recon_accuracy": (p_rec.argmax(1) == labels).double(),
        "real_accuracy": (p_test.argmax(1) == labels).double(),
    }

    def statistics(ix: Indices) -> dict[str, float]:
        t = ix["test"]
        dist = _distances("domain", "", f_rec, f_test, t, t, paired=True)
        out = {"domain_rfid": dist["domain_fid"], "domain_rkid": dist["domain_kid"]}
        out.update({key: _at(values, t).mean().item() for key, values in per_image.items()})
        return out

    return statistics


def inception_statistics(sets: dict[str, torch.Tensor], test, train, weights: str | None, device) -> Statistics:
    """The standard FID and KID on Inception-v3 pool features (299x299, grayscale copied to 3 channels) of
    `sets` ({"generated": samples} and/or {"recon": reconstructions}) against the test images, and floors."""
    f_test, f_train = (inception_features(x, weights, device=device).cpu() for x in (test, train))
    features = {name: inception_features(x, weights, device=device).cpu() for name, x in sets.items()}
    floor = floor_statistics("inception", f_test, f_train)

    def statistics(ix: Indices) -> dict[str, float]:
        out = floor(ix)
        if "generated" in features:
            out.update(_distances("inception", "", features["generated"], f_test, ix["generated"], ix["test"]))
        if "recon" in features:
            dist = _distances("inception", "", features["recon"], f_test, ix["test"], ix["test"], paired=True)
            out.update({"inception_rfid": dist["inception_fid"], "inception_rkid": dist["inception_kid"]})
        return out

    return statistics


def image_scores(
    classifier: DomainClassifier,
    test: torch.Tensor,
    seed: int,
    resamples: int,
    *,
    train: torch.Tensor | None = None,
    train_all: torch.Tensor | None = None,
    generated: torch.Tensor | None = None,
    recon: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    inception: dict | None = None,
) -> dict[str, float]:
    """Every sample-quality number of one evaluation, each with its bootstrap spread (`<key>_std`, over
    `resamples` resamples; none when 0), plus `domain_fid_inf` for generated images.

    test: the n test images; train: n train images, for the floors; generated (with train_all, every
    training image, uint8 or float as `embed` takes them: the memorisation check's reference) and/or recon
    (the reconstructions of `test`, with the test `labels`); inception: {"weights": path or None, "device": ...}
    adds the Inception-space numbers.
    The resamples and FID∞'s subsets come from the named streams 'bootstrap' and 'fid_infinity' of `seed`.
    """
    f_test, p_test = embed(classifier, test)
    parts, sizes = [], {"test": len(test)}
    scores: dict[str, float] = {}
    if train is not None:
        parts.append(floor_statistics("domain", f_test, embed(classifier, train)[0]))
        sizes["train"] = len(train)
    if generated is not None:
        f_gen, p_gen = embed(classifier, generated)
        f_all = embed(classifier, train_all)[0]
        to_train = nearest_distances(f_gen, f_all), nearest_distances(f_test, f_all)
        parts.append(generated_statistics(f_gen, p_gen, f_test, p_test, *to_train))
        sizes["generated"] = len(generated)
        scores["domain_fid_inf"], scores["domain_fid_inf_std"] = fid_infinity(
            f_gen, f_test, stream(seed, "fid_infinity")
        )
    if recon is not None:
        f_rec, p_rec = embed(classifier, recon)
        parts.append(reconstruction_statistics(f_rec, p_rec, f_test, p_test, recon, test, labels))
    if inception is not None:
        sets = {name: x for name, x in (("generated", generated), ("recon", recon)) if x is not None}
        parts.append(inception_statistics(sets, test, train, inception["weights"], inception["device"]))

    def statistics(ix: Indices) -> dict[str, float]:
        return {key: value for part in parts for key, value in part(ix).items()}

    scores.update(with_spreads(statistics, sizes, resamples, stream(seed, "bootstrap")))
    return {"num_samples": len(test), "bootstrap_resamples": resamples, **dict(sorted(scores.items()))}


def class_frequencies(classifier: DomainClassifier, images: torch.Tensor) -> np.ndarray:
    """Fraction of images the domain classifier assigns to each class (a mode-collapse indicator)."""
    probs = embed(classifier, images)[1]
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    return (counts.double() / len(images)).numpy()
