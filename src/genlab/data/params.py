"""The `data` section of params.yaml and the registry of datasets it picks from: plain data, no torch, so
the config assembly reads it without loading a dataset library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Protocol

from genlab.core.errors import ConfigError
from genlab.core.schema import MAX_IMAGES, between, in_unit, key, optional

# data.name -> (module, loader). Imported on demand: torchvision, scikit-learn and PIL cost seconds
# on every `import genlab.data`, and the training stages only need load_prepared.
LOADERS: dict[str, tuple[str, str]] = {
    "digits": ("genlab.data.digits", "load"),
    "mnist": ("genlab.data.torchvision_sets", "load_mnist_style"),
    "fashion_mnist": ("genlab.data.torchvision_sets", "load_mnist_style"),
    "kmnist": ("genlab.data.torchvision_sets", "load_mnist_style"),
    "cifar10": ("genlab.data.torchvision_sets", "load_cifar10"),
    "image_folder": ("genlab.data.image_folder", "load"),
}
DATASETS = tuple(LOADERS)  # the values data.name accepts


@dataclass(frozen=True)
class DataConfig:
    STAGES: ClassVar = ("download",)
    name: Literal[DATASETS] = key("digits")
    root: str = key(
        "data/raw", doc="download cache for the torchvision datasets, and scratch space while an image folder is prepared"
    )
    mirror: Optional[str] = key(None, doc="directory or URL that replaces the official download location")
    path: Optional[str] = key(None, doc="image_folder: the folder of images (subfolders = classes)")
    image_size: int = key(28, between(4, 1024), doc="image_folder: images are resized to image_size x image_size")
    channels: Literal[1, 3] = key(1, doc="image_folder: 1 = grayscale, 3 = RGB")
    val_fraction: float = key(0.1, in_unit(), doc="carved from the train split with a seeded permutation")
    test_fraction: float = key(0.2, in_unit(), doc="datasets without an official test split (digits, image_folder)")
    limit: Optional[int] = key(
        None,
        optional(between(10, MAX_IMAGES)),
        doc="at most this many images in each split, a seeded draw: a smoke-sized run in minutes (metrics say their "
        "n: split_sizes in the manifest, test/num_samples); null = every image",
    )
    skip_unreadable: bool = key(
        False,
        doc="image_folder: leave out the inputs it cannot use (unreadable, truncated, tiny (< 8 px), oversized, "
        "animated or multi-page, pixels without a known range, broken or repeated folder links, empty class "
        "folders: README, Data) instead of failing; they are listed in the manifest and counted on the MLflow run",
    )
    binarize: Literal["none", "dynamic"] = key(
        "none", stages=("train",), doc="dynamic: a fresh Bernoulli draw each time an image is seen"
    )

    def check(self, prefix: str) -> None:
        if self.name == "image_folder" and not self.path:
            raise ConfigError(f"{prefix}name is image_folder but '{prefix}path' is empty: set it to a folder of images")


class Settings(Protocol):
    """What preparing data reads of the experiment's params: its seed and its data section."""

    seed: int
    data: DataConfig
