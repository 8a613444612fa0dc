"""Registry of model families: `model.family` in params.yaml picks one."""

from __future__ import annotations

import torch

from genlab.config import Config
from genlab.errors import ConfigError
from genlab.models.base import Family
from genlab.models.ddpm import DDPM
from genlab.models.gan import GAN
from genlab.models.vae import VAE

FAMILIES: dict[str, type[Family]] = {"vae": VAE, "gan": GAN, "ddpm": DDPM}


def build_family(cfg: Config, image_shape: tuple[int, int, int], levels: int, device: torch.device) -> Family:
    try:
        cls = FAMILIES[cfg.model.family]
    except KeyError:
        raise ConfigError(
            f"model.family = {cfg.model.family!r} is not available; choose one of {', '.join(FAMILIES)}"
        ) from None
    return cls(cfg, image_shape, levels, device)


__all__ = ["FAMILIES", "Family", "build_family"]
