"""The trained model as an MLflow model (PyTorch flavour): `mlflow.pytorch.load_model("runs:/<run>/model")`
returns a `GenlabModel`, usable without the repository (genlab's code travels with it).

It is pickled, not exported with torch.export: genlab's samplers are Python loops with random generators
(DDIM, MaskGIT's parallel decoding), which a traced graph would freeze. Load models only from stores you trust.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlab.models import Family
from genlab.models.base import Generative

CODE = Path(__file__).resolve().parent  # the genlab package, shipped with the model so that unpickling finds it


class GenlabModel(nn.Module):
    """A trained family as one module: model(z) turns prior draws into images (a generative family), or
    model(images) reconstructs images in [0, 1] (a tokenizer); model.sample(n, seed) draws n images."""

    def __init__(self, family: Family):
        super().__init__()
        self.family = family
        self.networks = nn.ModuleDict(family.modules)  # so that .to(device) and .eval() reach the weights

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.family, Generative):
            return self.family.generate(x)
        return self.family.reconstruct(x, torch.Generator(x.device).manual_seed(0))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n new images in [0, 1] (generative families only)."""
        return self.family.sample(n, torch.Generator(self.family.device).manual_seed(seed))


def example_input(family: Family, images: torch.Tensor) -> torch.Tensor:
    """What `GenlabModel.forward` takes: two prior draws, or two of `images` (test images in [0, 1])."""
    if isinstance(family, Generative):
        return family.prior(2, torch.Generator(family.device).manual_seed(0))
    return images[:2].to(family.device)


def requirements() -> list[str]:
    """The installed distributions' versions, which MLflow compares with when it loads the model: torch.__version__
    carries a local build tag (2.14.1+cu130) that the wheel's metadata lacks, so MLflow warned of a mismatch."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "numpy")]


class _NotThePickleWarning(logging.Filter):
    """MLflow warns on every pickled PyTorch model; genlab pickles on purpose (module docstring, README)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


def log(family: Family, example: torch.Tensor, registered_name: str | None) -> Any:
    """Log the model into the active MLflow run as `model`, registered as a version of `registered_name`."""
    import mlflow

    family.train(False)
    logger, quiet = logging.getLogger("mlflow.pytorch"), _NotThePickleWarning()
    logger.addFilter(quiet)
    try:
        return mlflow.pytorch.log_model(
            GenlabModel(family),
            name="model",
            serialization_format="pickle",
            code_paths=[str(CODE)],
            input_example=example.cpu().numpy(),
            pip_requirements=requirements(),
            registered_model_name=registered_name,
        )
    finally:
        logger.removeFilter(quiet)
