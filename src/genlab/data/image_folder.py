"""A user folder of images: one class per first-level subfolder (or a single class), resized with PIL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.data.checksums import md5_bytes
from genlab.data.raw import RawData
from genlab.data.splits import Split
from genlab.errors import DataError

if TYPE_CHECKING:
    from genlab.config import Config

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BACKGROUND = (255, 255, 255, 255)  # opaque white under transparent pixels
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


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit as round(value / 257), so 65535 maps to 255; Pillow's convert clips at 255.

    Pillow opens 16-bit PNG/TIFF greyscale as 'I;16*' (older versions as 'I', read here as 16-bit too).
    """
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image onto white (BACKGROUND), as a viewer shows it on a light page.

    Dropping alpha instead would expose whatever colour hides under transparent pixels (often black
    or leftovers of editing), which differs from file to file.
    """
    if not image.has_transparency_data:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba).convert("RGB")


def _read(data: bytes, mode: str, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        flat = _flatten_alpha(_to_8bit(image))
        return np.asarray(flat.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


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
