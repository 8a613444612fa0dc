"""DVC stage `evaluate`: the family's test-split numbers and sample quality -> metrics/eval.json + MLflow test/*.

    python stages/evaluate.py [--name NAME] [--family FAMILY]

The family decides its test numbers (VAE: ELBO terms and IW-NLL; GAN: the game on test images;
DDPM: the variational bound). The domain classifier scores the samples of a family that generates
(FID and FID∞, KID, IS, precision/recall, density/coverage, the memorisation check) and the
reconstructions of one that reconstructs (rFID, rKID, PSNR, SSIM, class accuracy); the floors (real
train vs test images) read both. Every sample metric has its bootstrap spread `<key>_std`.
"""

from genlab.core import atomic, paths
from genlab.core.inference import sampling
from genlab.core.progress import step
from genlab.core.runtime import stream
from genlab.evaluation.classifier import load_classifier
from genlab.evaluation.scoring import image_scores, real_pair, reconstruct_in_batches, sample_in_batches
from genlab.models.base import Generative, Reconstructor
from genlab.pipeline.stage import run_stage, stage_args
from genlab.pipeline.trained import Trained, load_trained
from genlab.tracking import store
from genlab.training.sources import source_for


def image_quality(t: Trained, batch_size: int) -> dict[str, float]:
    """Domain-classifier scores of the family's samples and reconstructions with their bootstrap spreads,
    optionally the Inception-space ones (genlab.evaluation.scoring.image_scores)."""
    cfg, family, data = t.cfg, t.family, t.data
    n = min(cfg.evaluate.num_samples, len(data.test))
    classifier = load_classifier(paths.CLASSIFIER, t.device, data_md5=data.checksum)
    test, train = real_pair(data, n, stream(cfg.seed, "real_train_pick"))
    images = {}
    with sampling(cfg.sample.precision, t.device):  # inference mode; bf16 autocast if sample.precision asks
        if isinstance(family, Generative):
            gen = stream(cfg.seed, "eval_samples", t.device)
            images["generated"] = sample_in_batches(family.sample, n, gen, batch_size)
        if isinstance(family, Reconstructor):
            gen = stream(cfg.seed, "eval_reconstructions", t.device)
            images["recon"] = reconstruct_in_batches(family.reconstruct, test, gen, batch_size)
    if isinstance(family, Reconstructor):
        images["labels"] = data.test.labels[:n]
    inception = {"weights": cfg.evaluate.inception_weights, "device": t.device} if cfg.evaluate.inception_fid else None
    scores = image_scores(
        classifier,
        test,
        cfg.seed,
        cfg.evaluate.bootstrap,
        train=train,
        train_all=data.train.images,  # uint8 (mapped): the classifier converts batch by batch, never the whole split
        inception=inception,
        **images,
    )
    if "recon" in images:
        scores.update(family.reconstruction_distances(images["recon"], test))
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

    with step("evaluate", f"the {family.name} test numbers on {len(test)} test images"):
        results = family.test_metrics(batches, gen)
    scored = "samples and reconstructions" if isinstance(family, Generative | Reconstructor) else "real images"
    with step("evaluate", f"scores of {scored}, {cfg.evaluate.bootstrap} bootstrap resamples each"):
        results.update(image_quality(t, bs))
    atomic.write_json(t.paths.eval_metrics, {"test": results})
    print(" ".join(f"test/{k} {v:.4f}" for k, v in results.items()))

    tracker = store.attach(t.run_id)
    tracker.log_metrics({f"test/{k}": v for k, v in results.items()})
    convention = family.data_convention(binarize)
    if convention:
        tracker.set_tags({"genlab.data_convention": convention})
    tracker.log_artifact(t.paths.eval_metrics, "metrics")


if __name__ == "__main__":
    run_stage(run)
