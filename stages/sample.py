"""DVC stage `sample`: figures of the trained model -> samples/ and the train run's MLflow artifacts.

    python stages/sample.py [--name NAME] [--family FAMILY]

Every family: curves.png. A family that generates: samples.png, interpolation_linear.png and
interpolation_slerp.png (latent walks), class_histogram.png (classes of generated images by the domain
classifier). One with an encoder adds latent_map.png, and its latent walks run between the codes of
test images instead of prior draws; one that reconstructs adds reconstructions.png; one with figures
of its own draws them (the DDPM: trajectory.png and steps_grid.png). Last, the run's summary (genlab.reporting.summary):
printed, and logged to the run as summary.md and its description.
"""

import genlab  # noqa: F401  (first: it sets OpenMP's spin count, read when torch loads)

# isort: split
import numpy as np
import pandas as pd
import torch

from genlab.core import paths
from genlab.core.inference import sampling
from genlab.core.progress import step
from genlab.core.runtime import stream, stream_seed
from genlab.core.visualise import plot_class_histogram, plot_curves, plot_latent_map, save_grid
from genlab.evaluation.classifier import load_classifier
from genlab.evaluation.latents import interpolate, latent_map
from genlab.evaluation.scoring import class_frequencies, sample_in_batches
from genlab.models.base import Encoder, ExtraFigures, Generative, Reconstructor
from genlab.pipeline.stage import run_stage, stage_args
from genlab.pipeline.trained import Trained, load_trained
from genlab.reporting.summary import summary
from genlab.tracking import store


def class_histogram(t: Trained, n: int, path) -> None:
    classifier = load_classifier(paths.CLASSIFIER, t.device, data_md5=t.data.checksum)
    generated = sample_in_batches(t.family.sample, n, stream(t.cfg.seed, "class_histogram", t.device), 500)
    gen_freq = class_frequencies(classifier, generated)
    labels = t.data.test.labels
    real_freq = (torch.bincount(labels, minlength=len(gen_freq)).double() / len(labels)).numpy()
    kl = float(np.sum(gen_freq * (np.log(np.maximum(gen_freq, 1e-12)) - np.log(np.maximum(real_freq, 1e-12)))))
    plot_class_histogram(gen_freq, real_freq, f"{n} samples: KL(generated || test) = {kl:.3f} nats", path)


def generation_figures(t: Trained, test: torch.Tensor, out) -> None:
    """samples.png, the latent walks (continuous codes only) and class_histogram.png of a family that generates."""
    family, s, seed, device = t.family, t.cfg.sample, t.cfg.seed, t.device
    save_grid(family.sample(s.n, stream(seed, "figure_samples", device)), out / "samples.png")
    if family.walkable:
        k = min(s.interpolation_pairs, len(test) // 2)
        if isinstance(family, Encoder):
            z_a, z_b = family.encode(test[:k]), family.encode(test[k : 2 * k])
        else:
            z_a, z_b = family.prior(2 * k, stream(seed, "walk_ends", device)).chunk(2)
        for how in ("linear", "slerp"):
            grid = interpolate(family, z_a, z_b, s.interpolation_steps, how)
            save_grid(grid, out / f"interpolation_{how}.png", nrow=s.interpolation_steps)
    class_histogram(t, s.class_samples, out / "class_histogram.png")


def figures(t: Trained, test: torch.Tensor, out) -> None:
    """Every figure of the family's images: samples, reconstructions, latent map, the family's own."""
    cfg, family, s, device = t.cfg, t.family, t.cfg.sample, t.device
    if isinstance(family, Generative):
        with step("sample", f"{s.n} samples, latent walks and the class histogram of {s.class_samples}"):
            generation_figures(t, test, out)
    if isinstance(family, Reconstructor):
        with step("sample", "reconstructions"):
            pairs = family.paired_reconstructions(test[:32], stream(cfg.seed, "figure_reconstructions", device))
            save_grid(pairs, out / "reconstructions.png")
    if isinstance(family, Encoder):
        with step("sample", f"the latent map of {len(test)} test images"):
            points, how = latent_map(family, test, s.latent_map, stream_seed(cfg.seed, "latent_map") % 2**32)
            plot_latent_map(points, t.data.test.labels.numpy(), f"test set: {how}", out / "latent_map.png")
    if isinstance(family, ExtraFigures):
        with step("sample", f"the {family.name} figures"):
            family.figures(out, cfg.seed, test[:16])


@torch.no_grad()
def run() -> None:
    args = stage_args(__doc__.splitlines()[0])
    t = load_trained("sample", args.name, args.family)
    cfg, device, family, data = t.cfg, t.device, t.family, t.data
    s = cfg.sample
    out = t.paths.samples
    out.mkdir(parents=True, exist_ok=True)
    test = data.to_unit(data.test.images.to(device))

    with sampling(s.precision, device):  # inference mode; bf16 autocast if sample.precision asks
        figures(t, test, out)
    history = pd.read_csv(t.paths.history).to_dict("records")
    plot_curves(history, family.curves, out / "curves.png")

    tracker = store.attach(t.run_id)
    with step("sample", "uploading the figures to MLflow"):
        for png in sorted(out.glob("*.png")):
            tracker.log_artifact(png, "samples")  # checked: a full store is an error here, not a 0-byte figure
    names = ", ".join(sorted(p.name for p in out.glob("*.png")))
    print(f"wrote {names} to {out}/ and to MLflow run {tracker.run_id} (artifacts: samples/)")
    # The pipeline's last words: the run's key numbers against their floors, also on the run's page.
    text = summary(cfg, t.paths, store.run_url(tracker.run_id))
    tracker.log_text(text, "summary.md")
    tracker.set_tags({"mlflow.note.content": f"```\n{text}```"})
    print(text, end="")


if __name__ == "__main__":
    run_stage(run)
