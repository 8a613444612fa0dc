"""Dataset download, verification, splitting and the prepared files every later stage reads."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from genlab.core.errors import DataError
from genlab.data.params import DATASETS, LOADERS

if TYPE_CHECKING:
    from genlab.data.params import Settings
    from genlab.data.prepared import PreparedData
    from genlab.data.raw import RawData
    from genlab.data.splits import Split

__all__ = ["DATASETS", "FORMAT_VERSION", "prepare", "load_prepared", "PreparedData", "Split", "IMAGES_FILE", "MANIFEST_FILE"]

# The prepared format needs torch; imported on first use (PEP 562), so that the config's registry of
# dataset names and the checksums load without it.
_PREPARED = ("IMAGES_FILE", "FORMAT_VERSION", "MANIFEST_FILE", "PreparedData", "load_prepared", "write_prepared")


def __getattr__(name: str):
    if name in _PREPARED:
        return getattr(importlib.import_module("genlab.data.prepared"), name)
    if name == "Split":
        return importlib.import_module("genlab.data.splits").Split
    raise AttributeError(f"module 'genlab.data' has no attribute {name!r}")




def _loader(name: str) -> Callable[[Settings], RawData]:
    if name not in LOADERS:
        raise DataError(f"unknown dataset data.name={name!r}: set it to one of {', '.join(DATASETS)}")
    module, attr = LOADERS[name]
    return getattr(importlib.import_module(module), attr)


def prepare(cfg: Settings, out_dir: str | Path) -> dict:
    """Fetch and verify cfg.data's dataset, split it, and write the prepared files (genlab.data.prepared);
    returns the manifest.

    Nothing in out_dir changes unless every step succeeded.
    """
    import torch

    from genlab.data.prepared import FORMAT_VERSION, write_prepared
    from genlab.data.splits import at_most, carve

    raw = _loader(cfg.data.name)(cfg)
    # Indices into the source splits: images are gathered only as they are written.
    if raw.test is None:
        train, carved = carve(len(raw.train), cfg.data.test_fraction, cfg.seed, "test")
        test = (raw.train, carved)
    else:
        train, test = torch.arange(len(raw.train)), (raw.test, torch.arange(len(raw.test)))
    rest, carved = carve(len(train), cfg.data.val_fraction, cfg.seed, "val")
    parts = {"train": (raw.train, train[rest]), "val": (raw.train, train[carved]), "test": test}
    parts = {name: (source, index[at_most(len(index), cfg.data.limit, cfg.seed, name)])
             for name, (source, index) in parts.items()}  # fmt: skip
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": cfg.data.name,
        "source": raw.source,
        "source_md5": raw.source_md5,
        "max_value": raw.max_value,
        "image_shape": list(raw.train.images.shape[1:]),
        "split_sizes": {name: len(index) for name, (_, index) in parts.items()},
        "seed": cfg.seed,
        "val_fraction": cfg.data.val_fraction,
        "test_fraction": cfg.data.test_fraction if raw.test is None else None,  # None: official test split
        "limit": cfg.data.limit,  # None: every image; else at most this many per split (split_sizes says how many)
        "classes": raw.classes,
        **raw.extra,
    }
    return write_prepared(out_dir, parts, manifest)
