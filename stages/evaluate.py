"""DVC stage `evaluate`: the family's test-split numbers and sample quality -> metrics/eval.json + MLflow test/*.

The family decides its test numbers (VAE: ELBO terms and IW-NLL; GAN: the game on test images;
DDPM: the variational bound); every family's samples are scored by the domain classifier.
"""

from genlab import atomic, paths, stage, tracking
from genlab.config import config_from_dict
from genlab.quality.classifier import load_classifier
from genlab.quality.scoring import domain_scores, inception_fid, real_pair, reconstruction_scores, sample_in_batches
from genlab.runtime import generator
from genlab.training import batch_transform


def sample_quality(t: stage.Trained, batch_size: int) -> dict[str, float]:
    """Domain-classifier scores of the family's samples, reconstruction scores, optional Inception FID."""
    cfg, family, data = t.cfg, t.family, t.data
    n = min(cfg.evaluate.num_samples, len(data.test))
    classifier = load_classifier(paths.CLASSIFIER, t.device, data_md5=data.checksum)
    generated = sample_in_batches(family.sample, n, generator(t.device, cfg.seed + 5), batch_size)
    test, train = real_pair(data, n, cfg.seed + 6)
    scores = {"num_samples": n, **domain_scores(classifier, generated, test, train)}
    if hasattr(family, "reconstruct"):
        scores.update(reconstruction_scores(family.reconstruct, test, batch_size, t.device))
    if cfg.evaluate.inception_fid:
        scores.update(inception_fid(generated, test, train, cfg.evaluate.inception_weights, t.device))
    return scores


def run() -> None:
    t = stage.load_trained()
    cfg, device, family, data = t.cfg, t.device, t.family, t.data
    trained = config_from_dict(t.saved["config"])
    # With dynamic binarisation the test split is binarised once, by this seeded generator.
    transform = batch_transform(data, trained)
    gen = generator(device, cfg.seed + 3)
    bs, test = cfg.evaluate.batch_size, data.test.images
    batches = (transform(test[i : i + bs].to(device), gen) for i in range(0, len(test), bs))

    family.configure_sampling(cfg.sample)
    results = family.test_metrics(batches, gen, cfg)
    results.update(sample_quality(t, bs))
    atomic.write_json(paths.EVAL_METRICS, {"test": results})
    print(" ".join(f"test/{k} {v:.4f}" for k, v in results.items()))

    tracker = tracking.attach(stage.read_run_id())
    tracker.log_metrics({f"test/{k}": v for k, v in results.items()})
    convention = family.data_convention(trained.data.binarize)
    if convention:
        tracker.set_tags({"genlab.data_convention": convention})
    tracker.log_artifact(paths.EVAL_METRICS, "metrics")


if __name__ == "__main__":
    stage.main(run)
