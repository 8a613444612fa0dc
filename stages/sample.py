"""DVC stage `sample`: figures of the trained model -> samples/ and the train run's MLflow artifacts.

Every family: samples.png, interpolation_linear.png and interpolation_slerp.png (latent walks),
class_histogram.png (classes of generated images by the domain classifier), curves.png. Families with
an encoder (VAE) add reconstructions.png and latent_map.png; the latent walks then run between the
codes of test images instead of prior draws. The diffusion model adds trajectory.png (x_T -> x_0 along
the sampler's steps) and steps_grid.png (the same x_T sampled with each count of sample.steps_grid).
"""

import numpy as np
import pandas as pd
import torch

from genlab import paths, stage, tracking
from genlab.quality.classifier import load_classifier
from genlab.quality.scoring import sample_in_batches
from genlab.runtime import generator
from genlab.sampling import class_frequencies, interpolate, latent_map
from genlab.visualise import plot_class_histogram, plot_curves, plot_latent_map, save_grid, save_labelled_rows


TRAJECTORY_ROWS, TRAJECTORY_FRAMES = 8, 11


def diffusion_figures(t: stage.Trained, out) -> None:
    family, s, seed = t.family, t.cfg.sample, t.cfg.seed
    strip = family.trajectory(TRAJECTORY_ROWS, generator(t.device, seed + 10), TRAJECTORY_FRAMES)
    save_grid(strip, out / "trajectory.png", nrow=TRAJECTORY_FRAMES)
    x_T = family.prior(min(s.n, 16), generator(t.device, seed + 11))
    rows = [family.to_images(family.ddim_sample(x_T, k, s.eta, generator(t.device, seed + 12))) for k in s.steps_grid]
    save_labelled_rows(rows, [f"{k} steps" for k in s.steps_grid], out / "steps_grid.png")


def class_histogram(t: stage.Trained, n: int, path) -> None:
    classifier = load_classifier(paths.CLASSIFIER, t.device, data_md5=t.data.checksum)
    generated = sample_in_batches(t.family.sample, n, generator(t.device, t.cfg.seed + 9), 500)
    gen_freq = class_frequencies(classifier, generated)
    labels = t.data.test.labels
    real_freq = (torch.bincount(labels, minlength=len(gen_freq)).double() / len(labels)).numpy()
    kl = float(np.sum(gen_freq * (np.log(np.maximum(gen_freq, 1e-12)) - np.log(np.maximum(real_freq, 1e-12)))))
    plot_class_histogram(gen_freq, real_freq, f"{n} samples: KL(generated || test) = {kl:.3f} nats", path)


@torch.no_grad()
def run() -> None:
    t = stage.load_trained()
    cfg, device, family, data = t.cfg, t.device, t.family, t.data
    s = cfg.sample
    family.configure_sampling(s)
    out = paths.SAMPLES_DIR
    out.mkdir(exist_ok=True)
    test = data.to_unit(data.test.images.to(device))
    encoder = hasattr(family, "encode")

    save_grid(family.sample(s.n, generator(device, cfg.seed + 4)), out / "samples.png")
    k = min(s.interpolation_pairs, len(test) // 2)
    if encoder:
        z_a, z_b = family.encode(test[:k])[0], family.encode(test[k : 2 * k])[0]
    else:
        z_a, z_b = family.prior(2 * k, generator(device, cfg.seed + 8)).chunk(2)
    for how in ("linear", "slerp"):
        grid = interpolate(family, z_a, z_b, s.interpolation_steps, how)
        save_grid(grid, out / f"interpolation_{how}.png", nrow=s.interpolation_steps)
    if encoder:
        save_grid(family.paired_reconstructions(test[:32]), out / "reconstructions.png")
        points, how = latent_map(family, test, s.latent_map, cfg.seed)
        plot_latent_map(points, data.test.labels.numpy(), f"test set: {how}", out / "latent_map.png")
    if hasattr(family, "trajectory"):
        diffusion_figures(t, out)
    class_histogram(t, s.class_samples, out / "class_histogram.png")
    history = pd.read_csv(paths.TRAIN_HISTORY).to_dict("records")
    plot_curves(history, family.curves, out / "curves.png")
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} to {out}/")

    tracker = tracking.attach(stage.read_run_id())
    for png in sorted(out.glob("*.png")):
        tracker.log_artifact(png, "samples")


if __name__ == "__main__":
    stage.main(run)
