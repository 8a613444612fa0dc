"""A user folder of images: one class per first-level subfolder (or a single class), resized with PIL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


MIN_SIDE = 8  # smaller files are icons or tracking pixels, not pictures: resizing would invent the image


def _read(data: bytes, mode: str, size: int) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow only warns between its pixel limit and twice it; any image past the limit is refused.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            if min(image.size) < MIN_SIDE:
                raise ValueError(f"{image.size[0]}x{image.size[1]} pixels, under {MIN_SIDE} a side")
            flat = _flatten_alpha(_to_8bit(image))
            return np.asarray(flat.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _why(exc: Exception) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    return str(exc).split(" (")[0] or type(exc).__name__  # e.g. "image file is truncated"


def _listing(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load(cfg: Config) -> RawData:
    root = Path(cfg.data.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root} is not an existing folder: set data.path to {_LAYOUT}")
    files = _image_files(root)
    subfolders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f.as_posix() for f in files if len(f.parts) == 1]
    if loose and any(len(f.parts) > 1 for f in files):
        raise DataError(
            f"{root} has class subfolders ({', '.join(subfolders)}) and also images outside them "
            f"({_listing(loose)}): move those into a class subfolder or out of data.path"
        )
    mode = "L" if cfg.data.channels == 1 else "RGB"
    read, skipped = {}, {}
    for rel in files:
        data = (root / rel).read_bytes()
        try:
            read[rel] = (_read(data, mode, cfg.data.image_size), md5_bytes(data))
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            skipped[rel.as_posix()] = _why(exc)
    classes = sorted({rel.parts[0] for rel in read if len(rel.parts) > 1})
    empty = [] if loose else [d for d in subfolders if d not in classes]  # no usable image inside
    problems = [f"{path} ({why})" for path, why in skipped.items()] + [f"{d}/ (no usable image)" for d in empty]
    if problems and not cfg.data.skip_unreadable:
        raise DataError(
            f"{len(problems)} input(s) in {root} cannot be used: {_listing(problems)}. Fix or remove them, or set "
            "data.skip_unreadable: true to leave them out (then listed in data/prepared/manifest.json and "
            "counted on the MLflow run)"
        )
    if problems:
        print(f"data.skip_unreadable: left out {len(problems)} input(s) of {root}: {_listing(problems)}")
    if not read:
        raise DataError(f"no usable images in {root} (looked recursively for {', '.join(EXTENSIONS)}): "
                        f"set data.path to {_LAYOUT}")  # fmt: skip
    stacked = torch.from_numpy(np.stack([image for image, _ in read.values()]))
    stacked = stacked.unsqueeze(1) if cfg.data.channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()
    labels = [classes.index(rel.parts[0]) if classes else 0 for rel in read]
    return RawData(
        train=Split(stacked, torch.tensor(labels, dtype=torch.int64)),
        test=None,
        max_value=255,
        source=str(root.resolve()),
        source_md5={rel.as_posix(): md5 for rel, (_, md5) in read.items()},
        classes=classes or [root.resolve().name],
        extra={
            "image_size": cfg.data.image_size,
            "channels": cfg.data.channels,
            "skipped_files": skipped,
            "empty_class_folders": empty,
        },
    )
