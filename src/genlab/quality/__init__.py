"""Sample-quality metrics: FID and Fréchet distance, Inception Score, precision/recall/density/coverage,
PSNR and SSIM, and the FID Inception network's features."""

from genlab.quality.frechet import fid, frechet_distance, gaussian_stats
from genlab.quality.inception import inception_features
from genlab.quality.inception_score import inception_score
from genlab.quality.prdc import prdc
from genlab.quality.reconstruction import psnr, ssim

__all__ = [
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "inception_features",
    "inception_score",
    "prdc",
    "psnr",
    "ssim",
]
