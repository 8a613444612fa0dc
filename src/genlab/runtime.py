"""Device choice, seeding and random-generator state: everything random flows from `seed`."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from genlab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit CUDA request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed the global generators, for any library code that draws from them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Deterministic kernels make the same params on the same machine kind give identical metrics;
    # cuBLAS needs this workspace setting (read at CUDA start-up) to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class Rngs:
    """The training run's own generators: `order` (CPU: batch order) and `noise` (on the model's device)."""

    def __init__(self, seed: int, device: torch.device):
        self.order = generator(torch.device("cpu"), seed)
        self.noise = generator(device, seed + 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"order": self.order.get_state(), "noise": self.noise.get_state(), "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.order.set_state(state["order"])
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch"])
