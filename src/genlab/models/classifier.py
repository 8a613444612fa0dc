"""The domain classifier's network: a small CNN over the prepared data's images whose penultimate features
and class probabilities are the default space for FID, IS, precision/recall and density/coverage
(`evaluation.scoring`); FlowMo's perceptual distance uses the same network (`models.flowmo.perceptual`).
It is trained by `evaluation.classifier`.

The network adapts to the image shape: per entry of `classifier.channels` a 3x3 conv (padding 1)
+ ReLU, then a 2x2 max-pool while both sides are >= 2; then Linear -> `classifier.features` + ReLU
(the feature layer) and Linear -> classes. Inputs are images in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genlab.core.errors import DataError

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


def as_unit(model: DomainClassifier, images: torch.Tensor) -> torch.Tensor:
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
        x = as_unit(model, images[start : start + batch_size].to(model.device))
        f = model.features(x)
        feats.append(f.cpu())
        probs.append(torch.softmax(model.head(f), dim=1).cpu())
    model.train(was_training)
    if not feats:
        return torch.empty(0, model.num_features), torch.empty(0, model.num_classes)
    return torch.cat(feats), torch.cat(probs)
