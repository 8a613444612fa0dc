"""Per-image reconstruction metrics for images (N, C, H, W) with values in [0, 1].

Both return one value per image (float64, on the inputs' device); callers average over images, so a
dataset's score is the mean of per-image scores, not the score of one concatenated image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_K1, _K2 = 0.01, 0.03
_SIGMA = 1.5
_WINDOW = 11


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be images (N, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1): 10 log10(1 / MSE); inf for identical images."""
    _check_pair(x, y)
    mse = (x.detach().double() - y.detach().double()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), averaged over the SSIM map and the channels.

    Gaussian window with sigma 1.5 and size 11, K1 = 0.01, K2 = 0.03, data range 1; the map covers only
    positions where the whole window fits (no padding). For images smaller than 11 pixels on a side the
    window shrinks to the largest odd size <= min(H, W) (7 for 8x8 digits), sigma staying 1.5, so such
    scores are comparable with each other but not with 11-pixel-window scores elsewhere.
    """
    _check_pair(x, y)
    x, y = x.detach().double(), y.detach().double()
    _n, channels, height, width = x.shape
    size = min(_WINDOW, min(height, width) - (1 - min(height, width) % 2))
    if size < 1:
        raise ValueError(f"images of size {height}x{width} are too small for SSIM")
    window = _gaussian_window(size, _SIGMA, x.dtype, x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian, one filter per channel.
        z = F.conv2d(z, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
        return F.conv2d(z, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = _K1**2, _K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)
