"""DVC stage `sample`: sample, reconstruction, interpolation, latent-map and curve figures -> samples/."""

import pandas as pd
import torch

from genlab import paths, stage, tracking
from genlab.runtime import generator
from genlab.sampling import interpolate, latent_map
from genlab.visualise import plot_curves, plot_latent_map, save_grid


@torch.no_grad()
def run() -> None:
    t = stage.load_trained()
    cfg, device, family, data = t.cfg, t.device, t.family, t.data
    s = cfg.sample
    out = paths.SAMPLES_DIR
    out.mkdir(exist_ok=True)
    test = data.to_unit(data.test.images.to(device))

    save_grid(family.sample(s.n, generator(device, cfg.seed + 4)), out / "samples.png")
    save_grid(family.paired_reconstructions(test[:32]), out / "reconstructions.png")
    k = min(s.interpolation_pairs, len(test) // 2)
    grid = interpolate(family, test[:k], test[k : 2 * k], s.interpolation_steps)
    save_grid(grid, out / "interpolation.png", nrow=s.interpolation_steps)
    points, how = latent_map(family, test, s.latent_map, cfg.seed)
    plot_latent_map(points, data.test.labels.numpy(), f"test set: {how}", out / "latent_map.png")
    history = pd.read_csv(paths.TRAIN_HISTORY).to_dict("records")
    plot_curves(history, ["elbo", "recon", "kl"], out / "curves.png")
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} to {out}/")

    tracker = tracking.attach(stage.read_run_id())
    for png in sorted(out.glob("*.png")):
        tracker.log_artifact(png, "samples")


if __name__ == "__main__":
    stage.main(run)
