"""The family registry: `model.family` in params.yaml picks one. Registering a family here is all the
code outside its own module that a new family needs (its params section goes into params.yaml)."""

from __future__ import annotations

import torch

from genlab.models.base import DataSpec, Family
from genlab.models.ddpm import DDPM
from genlab.models.flowmo import FlowMo
from genlab.models.gan import GAN
from genlab.models.maskgit import MaskGIT
from genlab.models.vae import VAE

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (VAE, GAN, DDPM, FlowMo, MaskGIT)}


def build_family(name: str, cfg, data: DataSpec, device: torch.device) -> Family:
    """The family `name` built from its own params section `cfg`."""
    return FAMILIES[name](cfg, data, device)


__all__ = ["FAMILIES", "DataSpec", "Family", "build_family"]
