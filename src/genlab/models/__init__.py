"""The family registry: `model.family` in params.yaml picks one. A family is its params section
(`<family>_params.py`: plain data, what it needs besides its weights) and its network code (`<family>.py`);
registering both here is all the code outside those two modules that a new family needs.

`SECTIONS` is what validating params needs, without torch; `FAMILIES` (the classes) imports the network
code on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlab.core.schema import FamilyConfig
from genlab.models.ddpm.params import DDPMConfig
from genlab.models.flowmo.params import FlowMoConfig
from genlab.models.gan.params import GANConfig
from genlab.models.maskgit.params import MaskGITConfig
from genlab.models.vae.params import VAEConfig

if TYPE_CHECKING:
    import torch

    from genlab.models.base import DataSpec, Family

# name -> (params section, module:class of the network code)
REGISTRY: dict[str, tuple[type[FamilyConfig], str]] = {
    "vae": (VAEConfig, "genlab.models.vae.family:VAE"),
    "gan": (GANConfig, "genlab.models.gan.family:GAN"),
    "ddpm": (DDPMConfig, "genlab.models.ddpm.family:DDPM"),
    "flowmo": (FlowMoConfig, "genlab.models.flowmo.family:FlowMo"),
    "maskgit": (MaskGITConfig, "genlab.models.maskgit.family:MaskGIT"),
}
SECTIONS: dict[str, type[FamilyConfig]] = {name: section for name, (section, _) in REGISTRY.items()}
DEFAULT_FAMILY = next(iter(REGISTRY))  # model.family when params.yaml does not say


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


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "REGISTRY", "SECTIONS", "DataSpec", "Family", "build_family", "family_classes"]
