"""What the quality benchmarks share: prepared data from the local mirror and a cached domain classifier."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from genlab.config import Config
from genlab.data import PreparedData, load_prepared, prepare
from genlab.errors import CheckpointError
from genlab.quality.classifier import DomainClassifier, load_classifier, save_classifier, train_classifier

OUT = Path(__file__).resolve().parent / "out"


def prepared(cfg: Config) -> PreparedData:
    """cfg's dataset prepared once under bench/out/prepared_<name> (the split depends on seed and fractions)."""
    folder = OUT / f"prepared_{cfg.data.name}"
    prepare(cfg, folder)
    return load_prepared(folder)


def classifier_for(data: PreparedData, cfg: Config, device: torch.device) -> DomainClassifier:
    """The domain classifier of `data` (cfg.classifier params), trained once and cached in bench/out/."""
    path = OUT / f"{cfg.data.name}_classifier.pt"
    try:
        return load_classifier(path, device, data_md5=data.checksum)
    except CheckpointError:
        began = time.perf_counter()
        model, metrics = train_classifier(cfg, data, device)
        save_classifier(model, path, cfg.to_dict(), data.checksum, metrics)
        print(f"domain classifier: test accuracy {metrics['test']['accuracy']:.4f} "
              f"({time.perf_counter() - began:.0f} s, cached in {path})")
        return load_classifier(path, device, data_md5=data.checksum)
