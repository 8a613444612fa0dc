"""Figures: grids, interpolation and latent maps from a small VAE."""

import numpy as np
import pytest
import torch

from genlab.core.visualise import save_grid, to_grid
from genlab.evaluation.latents import interpolate, latent_map, slerp
from genlab.evaluation.scoring import class_frequencies

from families import make_family


def _vae(latent_dim=4):
    return make_family("vae", hidden=[16], latent_dim=latent_dim)


def test_grid_enlarges_tiny_images_and_keeps_values():
    images = torch.zeros(4, 1, 8, 8)
    images[1] = 1.0
    grid = to_grid(images, nrow=4)
    assert to_grid(torch.zeros(16, 1, 8, 8)).shape == (2 + 4 * 58, 2 + 4 * 58, 3)  # square by default
    # 8x8 images are shown 7x larger (56 px) with 2 px padding: 4 * (56 + 2) + 2 wide.
    assert grid.shape == (60, 234, 3) and grid.dtype == np.uint8
    assert grid[2:58, 60:116].min() == 255 and grid[2:58, 2:58].max() == 0


@pytest.mark.parametrize("n, channels, nrow", [(1, 1, None), (5, 1, None), (16, 3, None), (7, 1, 3), (2, 3, 1)])
def test_grid_layout_is_torchvisions_make_grid(n, channels, nrow):
    from torchvision.utils import make_grid  # genlab draws its own grids (torchvision's import costs seconds)

    images = torch.rand(n, channels, 60, 60)
    ours = to_grid(images, nrow)
    theirs = make_grid(images, nrow=nrow or int(np.ceil(np.sqrt(n))), padding=2, pad_value=1.0)
    theirs = (theirs * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, theirs)


def test_save_grid_writes_a_png(tmp_path):
    save_grid(torch.rand(6, 3, 32, 32), tmp_path / "g.png", nrow=3)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("how", ["linear", "slerp"])
def test_interpolation_starts_and_ends_at_the_endpoint_images(how):
    vae = _vae()
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows = interpolate(vae, z[:3], z[3:], steps=5, how=how).view(3, 5, 1, 8, 8)
        torch.testing.assert_close(rows[:, 0], vae.generate(z[:3]))
        torch.testing.assert_close(rows[:, -1], vae.generate(z[3:]))


def test_slerp_keeps_the_norm_between_equal_norm_endpoints_and_handles_parallel_ones():
    a = torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [2.0, 2.0, 0.0]])  # second pair parallel: a straight line
    t = torch.linspace(0, 1, 5)
    path = slerp(a, b, t)
    torch.testing.assert_close(path[0].norm(dim=-1), torch.full((5,), 3.0))
    torch.testing.assert_close(path[0, 2], torch.tensor([3 / 2**0.5, 3 / 2**0.5, 0.0]))
    torch.testing.assert_close(path[1], (1 - t).view(-1, 1) * a[1] + t.view(-1, 1) * b[1])


def test_class_frequencies_sum_to_one_over_the_classifiers_classes():
    from genlab.models.classifier import DomainClassifier

    torch.manual_seed(0)
    classifier = DomainClassifier((1, 8, 8), num_classes=10, channels=[4], features=8, max_value=16).eval()
    freq = class_frequencies(classifier, torch.rand(50, 1, 8, 8))
    assert freq.shape == (10,) and freq.min() >= 0 and freq.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_latent_map_gives_2d_points_per_image(method):
    with torch.no_grad():
        points, how = latent_map(_vae(), torch.rand(40, 1, 8, 8), method, seed=0)
    assert points.shape == (40, 2) and np.isfinite(points).all()
    assert ("PCA" in how) == (method == "pca")


def test_two_dimensional_latents_are_plotted_directly():
    vae = _vae(latent_dim=2)
    x = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        points, how = latent_map(vae, x, "pca", seed=0)
        np.testing.assert_allclose(points, vae.encode(x).double().numpy())
    assert how == "latent means"


def test_curves_are_drawn_against_the_epochs_as_counted_from_one(monkeypatch, tmp_path):
    from genlab.core import visualise

    figures = []
    monkeypatch.setattr(visualise, "_save_figure", lambda fig, path: figures.append(fig))
    history = [{"epoch": e, "train_elbo": -10.0 / e, "val_elbo": float("nan") if e == 2 else -9.0} for e in (1, 2, 3)]
    visualise.plot_curves(history, {"elbo": "nats/image"}, tmp_path / "c.png")
    train, val = figures[0].axes[0].lines
    assert list(train.get_xdata()) == [1, 2, 3] and list(val.get_xdata()) == [1, 3]
