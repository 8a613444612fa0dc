"""Training, saving and loading the domain classifier (the network: `models.classifier`), and the perceptual
network FlowMo trains with (the same network, params section `perceptual`).

    model, metrics = train_classifier(cfg, data, device)      # deterministic given cfg.seed
    save_classifier(model, paths.CLASSIFIER, cfg.to_dict(), data.checksum, metrics)
    model = load_classifier(paths.CLASSIFIER, device, data_md5=data.checksum)
    features, probs = embed(model, images)                    # uint8 (raw grid) or float in [0, 1]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genlab.config.experiment import Config, config_from_dict
from genlab.config.sections import ClassifierConfig
from genlab.core import checkpoint
from genlab.core.errors import CheckpointError, ConfigError
from genlab.core.progress import Pace, bar
from genlab.core.runtime import seed_everything, stream
from genlab.data import PreparedData
from genlab.models.classifier import EVAL_BATCH, DomainClassifier, as_unit

KIND = "domain_classifier"
UNUSED = "unused_network"  # the file a network stage writes when the model it serves does not use one


def num_classes(data: PreparedData) -> int:
    """len(manifest['classes']) when the dataset names its classes, else max label + 1."""
    classes = data.manifest.get("classes")
    top = max(int(s.labels.max()) for s in (data.train, data.val, data.test) if len(s)) + 1
    return max(len(classes), top) if classes else top


def build_classifier(
    ccfg: ClassifierConfig, image_shape: Sequence[int], classes: int, max_value: int
) -> DomainClassifier:
    return DomainClassifier(image_shape, classes, ccfg.channels, ccfg.features, max_value)


@torch.no_grad()
def evaluate(
    model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH
) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of `model` on uint8 images."""
    was_training = model.training
    model.train(False)
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = as_unit(model, images[start : start + batch_size].to(model.device))
        y = labels[start : start + batch_size].to(model.device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(images), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}


def train_classifier(
    cfg: Config, data: PreparedData, device: torch.device, section: str = "classifier"
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train a classifier on data.train (Adam, the params of `section`: `classifier`, or `perceptual` for
    the perceptual network FlowMo trains with), deterministically from cfg.seed (its own streams).

    Returns the model (eval mode) and metrics: {"epochs", "train": {accuracy, loss},
    "val": {accuracy, loss}, "test": {accuracy, loss}}; train time is printed, not returned, so
    the metrics file reproduces exactly.
    """
    ccfg = getattr(cfg, section)
    seed_everything(cfg.seed, f"{section}_init")  # weight init draws from the global generator
    model = build_classifier(ccfg, data.image_shape, num_classes(data), data.max_value).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=ccfg.lr, fused=True)
    n, bs = len(data.train), ccfg.batch_size
    steps = ccfg.epochs * math.ceil(n / bs)
    # Cosine decay of the learning rate to 0 over the run: the last epochs settle instead of
    # ending wherever the last noisy Adam step left the weights (a few % of test accuracy on digits).
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    order_gen = stream(cfg.seed, f"{section}_order")
    train_u8, labels = data.train.images.to(device), data.train.labels.to(device)
    pace = Pace(ccfg.epochs)
    for epoch in range(ccfg.epochs):
        began = time.perf_counter()
        model.train(True)
        order = torch.randperm(n, generator=order_gen).to(device)
        loss_sum, correct = 0.0, 0
        for i in bar(range(0, n, bs), f"{section} epoch {epoch + 1}/{ccfg.epochs}"):
            idx = order[i : i + bs]
            logits = model(as_unit(model, train_u8[idx]))
            loss = F.cross_entropy(logits, labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
        val = evaluate(model, data.val.images, data.val.labels)
        print(
            f"{section} epoch {epoch + 1}/{ccfg.epochs} train/loss {loss_sum / n:.4f} "
            f"train/accuracy {correct / n:.4f} val/accuracy {val['accuracy']:.4f} "
            + pace.note(epoch + 1, time.perf_counter() - began),
            flush=True,
        )
    model.train(False)
    metrics: dict[str, Any] = {"epochs": ccfg.epochs}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        metrics[name] = evaluate(model, split.images, split.labels)
    return model, metrics


def save_classifier(
    model: DomainClassifier,
    path: str | Path,
    config: dict[str, Any],
    data_md5: str,
    metrics: dict[str, Any] | None = None,
    section: str = "classifier",
) -> None:
    """Write the weights with what rebuilds them: the params (`section` names theirs), shape, classes, data md5."""
    checkpoint.save(
        path,
        {
            "kind": KIND,
            "section": section,
            "config": config,
            "image_shape": list(model.image_shape),
            "num_classes": model.num_classes,
            "max_value": model.max_value,
            "data_md5": data_md5,
            "metrics": metrics or {},
            "model": model.state_dict(),
        },
    )


def save_unused(path: str | Path, section: str, reason: str) -> None:
    """Stand in for a network nobody in this experiment uses: the stage's output exists (DVC needs it), costs
    no training, and loading it says why it is empty."""
    checkpoint.save(path, {"kind": UNUSED, "section": section, "reason": reason})


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu", data_md5: str | None = None
) -> DomainClassifier:
    """Rebuild the classifier from the params it was trained with (not today's params.yaml).

    With `data_md5` (the current PreparedData.checksum), a classifier trained on other data is a
    CheckpointError. The returned model is in eval mode and carries `.data_md5` and `.metrics`.
    """
    path = Path(path)
    stage = "perceptual" if path.stem.endswith("perceptual") else "classifier"
    fix = f"retrain it with `dvc repro {stage}` (or `python stages/classifier.py --section {stage}`)"
    if not path.is_file():
        raise CheckpointError(f"classifier file {path} does not exist: train it with `dvc repro {stage}`")
    saved = checkpoint.load(path, what="classifier file", fix=fix)
    if saved.get("kind") == UNUSED:
        raise CheckpointError(f"{path} holds no network: {saved['reason']}")
    if saved.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a domain-classifier file: {fix}")
    if data_md5 is not None and saved["data_md5"] != data_md5:
        raise CheckpointError(
            f"classifier {path} was trained on data {saved['data_md5']} but the prepared data is {data_md5}: {fix}"
        )
    try:
        ccfg = getattr(config_from_dict(saved["config"]), saved.get("section", "classifier"))
    except ConfigError as exc:
        raise CheckpointError(f"classifier {path} holds params this code no longer accepts ({exc}): {fix}") from None
    model = build_classifier(ccfg, saved["image_shape"], saved["num_classes"], saved["max_value"])
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"classifier {path} does not match its own params ({exc}): {fix}") from None
    model.data_md5 = saved["data_md5"]
    model.metrics = saved.get("metrics", {})
    return model.to(device).train(False)
