"""A user folder of images: one class per first-level subfolder (or a single class), resized with PIL."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.config import Config
from genlab.data.checksums import md5_bytes
from genlab.data.raw import RawData
from genlab.data.splits import Split
from genlab.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_LAYOUT = "a folder of images, either directly inside or in one subfolder per class"


def _image_files(root: Path) -> list[Path]:
    files = [
        p.relative_to(root)
        for p in root.rglob("*")
        if p.suffix.lower() in EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    # Sorted by POSIX path so the order, and thus the seeded splits, are the same on every machine.
    return sorted(files, key=Path.as_posix)


def _read(data: bytes, mode: str, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def load(cfg: Config) -> RawData:
    root = Path(cfg.data.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root} is not an existing folder: set data.path to {_LAYOUT}")
    files = _image_files(root)
    classes = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    loose = [f.as_posix() for f in files if len(f.parts) == 1]
    if classes and loose:
        raise DataError(
            f"{root} has class subfolders ({', '.join(classes)}) and also images outside them "
            f"({', '.join(loose[:5])}): move those into a class subfolder or out of data.path"
        )
    mode = "L" if cfg.data.channels == 1 else "RGB"
    images, labels, md5s, unreadable = [], [], {}, []
    for rel in files:
        data = (root / rel).read_bytes()
        try:
            images.append(_read(data, mode, cfg.data.image_size))
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(rel.as_posix())
            continue
        labels.append(classes.index(rel.parts[0]) if classes else 0)
        md5s[rel.as_posix()] = md5_bytes(data)
    if not images:
        raise DataError(
            f"no readable images in {root} ({len(unreadable)} unreadable; looked recursively for "
            f"{', '.join(EXTENSIONS)}): set data.path to {_LAYOUT}"
        )
    stacked = torch.from_numpy(np.stack(images))
    stacked = stacked.unsqueeze(1) if cfg.data.channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()
    return RawData(
        train=Split(stacked, torch.tensor(labels, dtype=torch.int64)),
        test=None,
        max_value=255,
        source=str(root.resolve()),
        source_md5=md5s,
        classes=classes or [root.resolve().name],
        extra={"image_size": cfg.data.image_size, "channels": cfg.data.channels, "unreadable_files": unreadable},
    )
