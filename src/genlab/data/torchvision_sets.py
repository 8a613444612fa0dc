"""MNIST-style sets and CIFAR-10 through torchvision's dataset classes, so its published md5s are enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING
from urllib.error import URLError

import torch
from torchvision.datasets import CIFAR10, KMNIST, MNIST, FashionMNIST
from torchvision.datasets.utils import calculate_md5, check_integrity

from genlab.data.mirror import Files, copy_from_directory, md5_mismatch, resolve
from genlab.data.raw import RawData
from genlab.data.splits import Split
from genlab.core.errors import DataError

if TYPE_CHECKING:
    from genlab.data.params import Settings

MNIST_STYLE = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "kmnist": KMNIST}


def _dataset_class(
    cls: type, cfg: Settings, dest: Path, files: Files, attrs: Callable[[str], dict[str, Any]], official: str
) -> tuple[type, str]:
    """cls, or a subclass that downloads from data.mirror; and where the files come from."""
    if not cfg.data.mirror:
        return cls, official
    url, directory = resolve(cfg.data.mirror)
    if directory is not None:
        copy_from_directory(directory, dest, files, cls.__name__)
    # Same class name, so torchvision keeps using its usual folders under data.root.
    return type(cls.__name__, (cls,), attrs(url)), str(directory or url)


def _construct(dataset_cls: type, cfg: Settings, dest: Path, files: Files, source: str) -> tuple:
    try:
        train = dataset_cls(cfg.data.root, train=True, download=True)
        return train, dataset_cls(cfg.data.root, train=False, download=True)
    except (URLError, OSError, RuntimeError) as exc:
        # torchvision leaves a corrupted or partial download in place; report it and remove it.
        for name, md5 in files:
            if (dest / name).is_file() and (got := calculate_md5(dest / name)) != md5:
                (dest / name).unlink()
                raise md5_mismatch(name, source, md5, got, dataset_cls.__name__) from exc
        names = ", ".join(name for name, _ in files)
        fix = (
            f"check that data.mirror serves {names}"
            if cfg.data.mirror
            else f"without network access, set data.mirror to a directory or URL (e.g. file:///path/) holding {names}: "
            f"`dvc exp run -S data.mirror=/path/to/{cfg.data.name}` or edit data.mirror in params.yaml"
        )
        raise DataError(
            f"downloading {dataset_cls.__name__} from {source} failed ({' '.join(str(exc).split())}); {fix}"
        ) from exc


def _verified(dest: Path, files: Files, source: str, owner: str) -> dict[str, str]:
    md5s = {}
    for name, md5 in files:
        got = calculate_md5(dest / name)
        if got != md5:
            (dest / name).unlink()
            raise md5_mismatch(name, source, md5, got, owner)
        md5s[name] = got
    return md5s


def load_mnist_style(cfg: Settings) -> RawData:
    cls = MNIST_STYLE[cfg.data.name]
    raw = Path(cfg.data.root) / cls.__name__ / "raw"  # torchvision's MNIST.raw_folder
    files = [(name, md5) for name, md5 in cls.resources]
    official = ", ".join(cls.mirrors)
    dataset_cls, source = _dataset_class(cls, cfg, raw, files, lambda url: {"mirrors": [url]}, official)
    for name, md5 in files:
        if not check_integrity(raw / name, md5):
            # torchvision only checks that the extracted files exist; dropping them with their
            # unverified archive forces a fresh download that it does verify.
            (raw / name).unlink(missing_ok=True)
            (raw / Path(name).stem).unlink(missing_ok=True)
    train, test = _construct(dataset_cls, cfg, raw, files, source)
    return RawData(
        train=Split(train.data.unsqueeze(1).contiguous(), train.targets.long()),
        test=Split(test.data.unsqueeze(1).contiguous(), test.targets.long()),
        max_value=255,
        source=source,
        source_md5=_verified(raw, files, source, cls.__name__),
        classes=list(train.classes),
    )


def _cifar_split(dataset: CIFAR10) -> Split:
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return Split(images, torch.tensor(dataset.targets, dtype=torch.int64))


def load_cifar10(cfg: Settings) -> RawData:
    cls = CIFAR10
    root = Path(cfg.data.root)
    files = [(cls.filename, cls.tgz_md5)]
    dataset_cls, source = _dataset_class(cls, cfg, root, files, lambda url: {"url": url + cls.filename}, cls.url)
    if (root / cls.filename).is_file() and not check_integrity(root / cls.filename, cls.tgz_md5):
        (root / cls.filename).unlink()
    train, test = _construct(dataset_cls, cfg, root, files, source)
    # The constructor has verified the extracted batches and metadata against these md5s.
    extracted = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    md5s = {f"{cls.base_folder}/{name}": md5 for name, md5 in extracted}
    if (root / cls.filename).is_file():  # absent when only the extracted batches are cached
        md5s.update(_verified(root, files, source, cls.__name__))
    return RawData(
        train=_cifar_split(train),
        test=_cifar_split(test),
        max_value=255,
        source=source,
        source_md5=md5s,
        classes=list(train.classes),
    )
