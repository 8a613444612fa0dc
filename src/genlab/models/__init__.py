"""The family registry: `model.family` in params.yaml picks one. A family is its params section
(`<family>_params.py`: plain data, what it needs besides its weights) and its network code (`<family>.py`);
registering both here is all the code outside those two modules that a new family needs.

`SECTIONS` is what validating params needs, without torch; `FAMILIES` (the classes) imports the network
code on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlab.models.ddpm_params import DDPMConfig
from genlab.models.flowmo_params import FlowMoConfig
from genlab.models.gan_params import GANConfig
from genlab.models.maskgit_params import MaskGITConfig
from genlab.models.vae_params import VAEConfig
from genlab.schema import FamilyConfig

if TYPE_CHECKING:
    import torch

    from genlab.models.base import DataSpec, Family

# name -> (params section, module:class of the network code)
REGISTRY: dict[str, tuple[type[FamilyConfig], str]] = {
    "vae": (VAEConfig, "genlab.models.vae:VAE"),
    "gan": (GANConfig, "genlab.models.gan:GAN"),
    "ddpm": (DDPMConfig, "genlab.models.ddpm:DDPM"),
    "flowmo": (FlowMoConfig, "genlab.models.flowmo:FlowMo"),
    "maskgit": (MaskGITConfig, "genlab.models.maskgit:MaskGIT"),
}
SECTIONS: dict[str, type[FamilyConfig]] = {name: section for name, (section, _) in REGISTRY.items()}


def family_classes() -> dict[str, type[Family]]:
    """name -> Family class, importing the network code (torch) once."""
    if "FAMILIES" not in globals():
        classes = {}
        for family, (_, where) in REGISTRY.items():
            module, cls = where.split(":")
            classes[family] = getattr(importlib.import_module(module), cls)
        globals()["FAMILIES"] = classes
    return globals()["FAMILIES"]


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":
        return family_classes()
    if name in ("DataSpec", "Family"):
        return getattr(importlib.import_module("genlab.models.base"), name)
    raise AttributeError(f"module 'genlab.models' has no attribute {name!r}")


def build_family(name: str, cfg: FamilyConfig, data: DataSpec, device: torch.device) -> Family:
    """The family `name` built from its own params section `cfg`."""
    return family_classes()[name](cfg, data, device)


__all__ = ["FAMILIES", "REGISTRY", "SECTIONS", "DataSpec", "Family", "build_family", "family_classes"]
