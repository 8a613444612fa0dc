"""DVC stage `evaluate`: the family's test-split numbers and sample quality -> metrics/eval.json + MLflow test/*.

    python stages/evaluate.py [--name NAME] [--family FAMILY]

The family decides its test numbers (VAE: ELBO terms and IW-NLL; GAN: the game on test images;
DDPM: the variational bound). The domain classifier scores the samples of a family that generates
(FID, IS, precision/recall, density/coverage) and the reconstructions of one that reconstructs
(rFID, PSNR, SSIM, class accuracy); `domain_fid_floor` (real train vs test images) reads both.
"""

from genlab import atomic, paths, tracking
from genlab.errors import exit_on_error
from genlab.models.base import Generative, Reconstructor
from genlab.quality.classifier import embed, load_classifier
from genlab.quality.frechet import fid
from genlab.quality.scoring import (
    domain_scores,
    inception_fid,
    real_pair,
    reconstruct_in_batches,
    reconstruction_scores,
    sample_in_batches,
)
from genlab.runtime import stream
from genlab.sources import source_for
from genlab.trained import Trained, load_trained, stage_args


def image_quality(t: Trained, batch_size: int) -> dict[str, float]:
    """Domain-classifier scores of the family's samples and reconstructions, optional Inception FIDs."""
    cfg, family, data = t.cfg, t.family, t.data
    n = min(cfg.evaluate.num_samples, len(data.test))
    classifier = load_classifier(paths.CLASSIFIER, t.device, data_md5=data.checksum)
    test, train = real_pair(data, n, stream(cfg.seed, "real_train_pick"))
    scores: dict[str, float] = {
        "num_samples": n,
        "domain_fid_floor": fid(embed(classifier, train)[0], embed(classifier, test)[0]),
    }
    inception = {}
    if isinstance(family, Generative):
        generated = sample_in_batches(family.sample, n, stream(cfg.seed, "eval_samples", t.device), batch_size)
        scores.update(domain_scores(classifier, generated, test, train))
        inception["inception_fid"] = generated
    if isinstance(family, Reconstructor):
        recon = reconstruct_in_batches(
            family.reconstruct, test, stream(cfg.seed, "eval_reconstructions", t.device), batch_size
        )
        scores.update(reconstruction_scores(classifier, recon, test, data.test.labels[:n]))
        scores.update(family.reconstruction_distances(recon, test))
        inception["inception_rfid"] = recon
    if cfg.evaluate.inception_fid:
        for key, images in inception.items():
            found = inception_fid(images, test, train, cfg.evaluate.inception_weights, t.device)
            scores.update({key: found["inception_fid"], "inception_fid_floor": found["inception_fid_floor"]})
    return scores


def run() -> None:
    args = stage_args(__doc__.splitlines()[0])
    t = load_trained("evaluate", args.name, args.family)
    cfg, device, family, data = t.cfg, t.device, t.family, t.data
    binarize = t.saved["config"]["data"]["binarize"]
    # With dynamic binarisation the test split is binarised once, by this seeded generator.
    source = source_for(family, data, binarize, t.upstream_md5)
    gen = stream(cfg.seed, "test_noise", device)
    bs, test = cfg.evaluate.batch_size, source.test
    batches = (source.to_input(test[i : i + bs].to(device), gen) for i in range(0, len(test), bs))

    results = family.test_metrics(batches, gen)
    results.update(image_quality(t, bs))
    atomic.write_json(t.paths.eval_metrics, {"test": results})
    print(" ".join(f"test/{k} {v:.4f}" for k, v in results.items()))

    tracker = tracking.attach(t.run_id)
    tracker.log_metrics({f"test/{k}": v for k, v in results.items()})
    convention = family.data_convention(binarize)
    if convention:
        tracker.set_tags({"genlab.data_convention": convention})
    tracker.log_artifact(t.paths.eval_metrics, "metrics")


if __name__ == "__main__":
    exit_on_error(run)
