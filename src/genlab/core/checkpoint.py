"""Training checkpoints: everything needed to continue a killed run bit-for-bit."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from genlab.core import atomic
from genlab.core.errors import CheckpointError

FORMAT_VERSION = 1
RETRAIN = "retrain with `dvc repro train`"


def save(path: str | Path, state: dict[str, Any]) -> None:
    atomic.torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load(path: str | Path, what: str = "checkpoint", fix: str = RETRAIN) -> dict[str, Any]:
    """Load a file written by `save`; any damage becomes a CheckpointError naming the file and `fix`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist: run the train stage first (`dvc repro train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises loading with weights_only=False, which runs any code the file holds.
        raise CheckpointError(
            f"{what} {path} is corrupted or not a genlab file (it holds more than tensors and plain data, "
            f"which genlab never loads): {fix}"
        ) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        name, detail = exc.__class__.__name__, str(exc).split(". ")[0].strip()
        raise CheckpointError(
            f"{what} {path} is corrupted or not a genlab file ({f'{name}: {detail}' if detail else name}): {fix}"
        ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{what} {path} was written by a newer genlab (format {version}; this code reads {FORMAT_VERSION}): "
            f"update this checkout (git pull) to read it, or {fix}"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{what} {path} has format {'?' if version is None else version}, expected {FORMAT_VERSION}: {fix}"
        )
    return state
