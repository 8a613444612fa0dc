"""The domain classifier: a small CNN trained on the prepared data, whose penultimate features and
class probabilities are the default space for FID, IS, precision/recall and density/coverage.

    model, metrics = train_classifier(cfg, data, device)      # deterministic given cfg.seed
    save_classifier(model, paths.CLASSIFIER, cfg.to_dict(), data.checksum, metrics)
    model = load_classifier(paths.CLASSIFIER, device, data_md5=data.checksum)
    features, probs = embed(model, images)                    # uint8 (raw grid) or float in [0, 1]

The network adapts to the image shape: per entry of `classifier.channels` a 3x3 conv (padding 1)
+ ReLU, then a 2x2 max-pool while both sides are >= 2; then Linear -> `classifier.features` + ReLU
(the feature layer) and Linear -> classes. Inputs are images in [0, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genlab import checkpoint
from genlab.config import ClassifierConfig, Config, config_from_dict
from genlab.data import PreparedData
from genlab.errors import CheckpointError, ConfigError, DataError
from genlab.progress import Pace, bar
from genlab.runtime import seed_everything, stream

KIND = "domain_classifier"
UNUSED = "unused_network"  # the file a network stage writes when the model it serves does not use one
EVAL_BATCH = 1000


class DomainClassifier(nn.Module):
    """conv(3x3)+ReLU(+maxpool 2x2) per width, then Linear->features+ReLU, then Linear->classes."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        features: int = 128,
        max_value: int = 255,
    ):
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        self.num_classes = int(num_classes)
        self.num_features = int(features)
        self.max_value = int(max_value)  # the uint8 value that means 1.0 (16 for digits, 255 otherwise)
        layers: list[nn.Module] = []
        in_ch = c
        for width in channels:
            layers += [nn.Conv2d(in_ch, int(width), 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            in_ch = int(width)
        self.conv = nn.Sequential(*layers)
        self.feature = nn.Linear(in_ch * h * w, self.num_features)
        self.head = nn.Linear(self.num_features, self.num_classes)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (after the ReLU): float (N, features)."""
        h = self.conv(x * 2.0 - 1.0)  # inputs in [0, 1], centred
        return F.relu(self.feature(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.features(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=1)


def num_classes(data: PreparedData) -> int:
    """len(manifest['classes']) when the dataset names its classes, else max label + 1."""
    classes = data.manifest.get("classes")
    top = max(int(s.labels.max()) for s in (data.train, data.val, data.test) if len(s)) + 1
    return max(len(classes), top) if classes else top


def build_classifier(
    ccfg: ClassifierConfig, image_shape: Sequence[int], classes: int, max_value: int
) -> DomainClassifier:
    return DomainClassifier(image_shape, classes, ccfg.channels, ccfg.features, max_value)


def _as_unit(model: DomainClassifier, images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / model.max_value
    return images.to(torch.float32)


@torch.no_grad()
def embed(
    model: DomainClassifier, images: torch.Tensor, batch_size: int = EVAL_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), probabilities (N, K)), float32 on the CPU.

    `images`: (N, C, H, W) uint8 on the prepared data's grid (divided by the classifier's
    max_value) or float in [0, 1]; on any device; moved to the model's device batch by batch.
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != model.image_shape:
        raise DataError(
            f"the classifier takes images of shape (N, {', '.join(map(str, model.image_shape))}), "
            f"got {tuple(images.shape)}: score images of the dataset it was trained on"
        )
    was_training = model.training
    model.train(False)
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        x = _as_unit(model, images[start : start + batch_size].to(model.device))
        f = model.features(x)
        feats.append(f.cpu())
        probs.append(torch.softmax(model.head(f), dim=1).cpu())
    model.train(was_training)
    if not feats:
        return torch.empty(0, model.num_features), torch.empty(0, model.num_classes)
    return torch.cat(feats), torch.cat(probs)


@torch.no_grad()
def evaluate(
    model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH
) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of `model` on uint8 images."""
    was_training = model.training
    model.train(False)
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = _as_unit(model, images[start : start + batch_size].to(model.device))
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
            logits = model(_as_unit(model, train_u8[idx]))
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
