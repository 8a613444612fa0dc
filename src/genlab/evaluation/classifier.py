"""Training, saving and loading the domain classifier (the network: `models.classifier`), and the perceptual
network FlowMo trains with (the same network, params section `perceptual`).

    model, metrics = train_classifier(cfg, data, device)      # deterministic given cfg.seed
    save_classifier(model, paths.CLASSIFIER, cfg.to_dict(), data.checksum, metrics)
    model = load_classifier(paths.CLASSIFIER, device, data_md5=data.checksum)
    features, probs = embed(model, images)                    # uint8 (raw grid) or float in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genlab.config.experiment import Config, config_from_dict
from genlab.config.sections import ClassifierConfig, TrainConfig
from genlab.core import checkpoint
from genlab.core.errors import CheckpointError, ConfigError
from genlab.core.runtime import seed_everything
from genlab.data import PreparedData
from genlab.data.prepared import Rows
from genlab.models.base import Family, OptimizerSpec
from genlab.models.classifier import EVAL_BATCH, DomainClassifier, as_unit
from genlab.training.loop import NullTracker, fit
from genlab.training.sources import Source

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
    model: DomainClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    rows: Rows | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of `model` on uint8 images (batches gathered by `rows`, the
    prepared data's, when the images are its mapped file: see Rows)."""
    was_training = model.training
    model.train(False)
    correct, loss_sum = 0, 0.0
    rows = rows or Rows()
    for start in range(0, len(images), batch_size):
        batch = rows.gather(images, torch.arange(start, min(start + batch_size, len(images))))
        x = as_unit(model, batch.to(model.device))
        y = labels[start : start + batch_size].to(model.device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(images), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}


class LabelledImages(Family):
    """A classifier as a family the one training loop trains (`training.loop.fit`): cross-entropy on labelled
    images. Its batches are the rows of `labelled_source` (pixels and label in one row, so the loop's
    batches-by-index serve it unchanged)."""

    name = "classifier"
    metric_names = ("loss", "accuracy")
    curves: ClassVar[dict[str, str]] = {}

    def __init__(self, model: DomainClassifier, lr: float):
        # Not Family.__init__: no params section of a family's kind (FamilyConfig), nothing upstream, no scorer.
        self.net, self.lr, self.device = model, lr, model.device
        self.image_shape = model.image_shape
        self.modules: dict[str, nn.Module] = {"net": model}
        self.ema_of: dict = {}
        self.fid_every = 0

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"net": OptimizerSpec(list(self.net.parameters()), self.lr)}

    def _split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (rows[:, :-1].reshape(-1, *self.image_shape).to(torch.float32) / self.net.max_value, rows[:, -1].long())

    def _step(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = self._split(rows)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}

    def losses(self, x, epoch, gen):
        loss, metrics = self._step(x)
        return {"net": loss}, metrics

    def eval_step(self, x, epoch, gen):
        return self._step(x)[1]

    def test_metrics(self, batches, gen):
        raise NotImplementedError("a classifier's test numbers come from evaluate()")

    def snapshot(self, fixed_batch, gen):
        return {}


class LabelledRows(Rows):
    """Labelled rows (a split's uint8 pixels flattened, the label as last column) gathered batch by batch from
    the prepared splits, so a dataset larger than memory is never copied whole. A split is stored as the
    numbers of its images among all three splits (train, then val, then test)."""

    def __init__(self, data: PreparedData, dtype: torch.dtype):
        super().__init__()
        self.data, self.dtype = data, dtype
        self.splits = (data.train, data.val, data.test)
        self.starts = torch.tensor([0, len(data.train), len(data.train) + len(data.val)])

    def handles(self) -> list[torch.Tensor]:
        """The stored form of each split: its images' numbers."""
        return [torch.arange(len(split)) + start for split, start in zip(self.splits, self.starts.tolist())]

    def gather(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        numbers = stored[index]
        if len(numbers) == 0:
            return torch.empty((0, self.data.train.images[0].numel() + 1), dtype=self.dtype)
        k = int(torch.searchsorted(self.starts, numbers[0], right=True)) - 1  # a stored tensor is one split's
        split, local = self.splits[k], numbers - self.starts[k]
        pixels = self.data.rows.gather(split.images, local).flatten(1).to(self.dtype)
        return torch.cat([pixels, split.labels[local, None].to(self.dtype)], dim=1)


def labelled_source(data: PreparedData) -> Source:
    """Batches of labelled rows (`LabelledRows`: uint8 while every label fits), gathered as the loop asks."""
    rows = LabelledRows(data, torch.uint8 if num_classes(data) <= 256 else torch.int32)
    return Source(*rows.handles(), lambda stored, gen: stored, rows)


def train_classifier(
    cfg: Config, data: PreparedData, device: torch.device, section: str = "classifier"
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train a classifier on data.train with the params of `section` (`classifier`, or `perceptual` for the
    network FlowMo trains with), deterministically from cfg.seed (its own streams), through the one loop:
    Adam with the learning rate cosine-decayed to 0 over the run, so the last epochs settle instead of ending
    wherever the last noisy step left the weights (a few % of test accuracy on digits); fp32, no clipping.

    Returns the model (eval mode) and metrics: {"epochs", "train": {accuracy, loss},
    "val": {accuracy, loss}, "test": {accuracy, loss}}; train time is printed, not returned, so
    the metrics file reproduces exactly.
    """
    ccfg = getattr(cfg, section)
    seed_everything(cfg.seed, f"{section}_init")  # weight init draws from the global generator
    model = build_classifier(ccfg, data.image_shape, num_classes(data), data.max_value).to(device)
    schedule = TrainConfig(epochs=ccfg.epochs, batch_size=ccfg.batch_size, lr_schedule="cosine")
    fit(
        LabelledImages(model, ccfg.lr),
        labelled_source(data),
        schedule,
        cfg.seed,
        key=section,
        tracker=NullTracker(),
        label=f"{section} epoch",
        order=f"{section}_order",
    )
    model.train(False)
    metrics: dict[str, Any] = {"epochs": ccfg.epochs}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        metrics[name] = evaluate(model, split.images, split.labels, rows=data.rows)
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
