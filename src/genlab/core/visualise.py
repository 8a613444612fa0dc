"""Image grids and plots. Inputs are image tensors in [0, 1], shape (N, C, H, W)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genlab.core import atomic

# Small images (8x8 digits, 28x28 MNIST) are enlarged, pixel for pixel, to at least this: in MLflow's image
# cards and run pages a grid is shown scaled to the card, where 8-pixel digits would be a few pixels wide.
MIN_DISPLAY_SIZE = 56


def to_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """A grid as an (H, W, C) uint8 array, ready for PNG files and mlflow.log_image; square by default
    (ceil(sqrt(N)) per row), which reads larger in a thumbnail than a wide strip."""
    images = images.detach().float().cpu().clamp(0, 1)
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    scale = max(1, -(-MIN_DISPLAY_SIZE // images.shape[-1]))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    array = (_tile(images, nrow) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array.repeat(3, axis=2) if images.shape[1] == 1 else array


def _tile(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """torchvision.utils.make_grid's layout (white padding; one image alone unpadded), written here because
    importing torchvision costs every stage seconds (it loads torch._dynamo)."""
    if len(images) == 1:
        return images[0]
    n, channels, h, w = images.shape
    cols, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    grid = images.new_ones((channels, rows * (h + padding) + padding, cols * (w + padding) + padding))
    for k, image in enumerate(images):
        row, col = divmod(k, cols)
        top, left = row * (h + padding) + padding, col * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    from PIL import Image

    with atomic.atomic_path(path) as tmp:
        Image.fromarray(to_grid(images, nrow)).save(tmp, format="PNG")


def save_labelled_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: str | Path) -> None:
    """One image row per entry of `rows` (each (N, C, H, W) in [0, 1]), its label on the left."""
    plt = _pyplot()
    grids = [to_grid(r, nrow=len(r)) for r in rows]
    height, width = grids[0].shape[:2]
    fig, axes = plt.subplots(len(grids), 1, figsize=(width / 60 + 1, len(grids) * height / 60), squeeze=False)
    for ax, grid, label in zip(axes[:, 0], grids, labels):
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    _save_figure(fig, path)


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (stages run without a display); imported late: it is slow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_latent_map(points: np.ndarray, labels: np.ndarray, title: str, path: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
    fig.colorbar(scatter, ax=ax, label="label")
    ax.set_title(title)
    _save_figure(fig, path)


def plot_curves(history: Sequence[dict], curves: dict[str, str], path: str | Path) -> None:
    """One panel per metric (name -> unit), train and val against epoch; epochs without a value are skipped."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (name, unit) in zip(axes[0], curves.items()):
        for split in ("train", "val"):
            points = [(row["epoch"], row[f"{split}_{name}"]) for row in history if f"{split}_{name}" in row]
            points = [(e, v) for e, v in points if v == v]  # drop NaN (metric not computed that epoch)
            if points:
                ax.plot(*zip(*points), label=split, marker="." if len(points) < 20 else None)
        ax.set_title(f"{name} ({unit})")
        ax.set_xlabel("epoch")
        ax.legend()
    _save_figure(fig, path)


def plot_token_usage(counts: np.ndarray, path: str | Path) -> None:
    """How often each token id occurs (a tokenizer's codebook use), ids sorted by frequency."""
    plt = _pyplot()
    ordered = np.sort(counts)[::-1] / max(counts.sum(), 1)
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(np.arange(len(ordered)), ordered, width=1.0)
    ax.set_xlabel("token id, most used first")
    ax.set_ylabel("share of tokens")
    ax.set_title(f"{used} of {len(counts)} token ids used")
    _save_figure(fig, path)


def plot_class_histogram(generated: np.ndarray, real: np.ndarray, title: str, path: str | Path) -> None:
    """Class frequencies of generated images (domain classifier) beside the real test labels'."""
    plt = _pyplot()
    classes = np.arange(len(generated))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(classes - 0.2, generated, width=0.4, label="generated (classifier)")
    ax.bar(classes + 0.2, real, width=0.4, label="test set (labels)")
    ax.set_xticks(classes)
    ax.set_xlabel("class")
    ax.set_ylabel("fraction of images")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    _save_figure(fig, path)
