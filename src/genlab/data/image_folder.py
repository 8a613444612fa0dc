"""A user folder of images: one class per first-level subfolder (or a single class), resized with PIL."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections import deque
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from genlab.data.checksums import md5_bytes
from genlab.data.prepared import map_file
from genlab.data.raw import RawData
from genlab.data.splits import Split
from genlab.core.errors import DataError

if TYPE_CHECKING:
    from genlab.data.params import Settings

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# The Pillow formats those extensions name (Pillow calls PGM "PPM"). MPO: a camera JPEG that carries extra
# pictures (a preview, a depth map) after the picture itself, which is its first frame.
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP", "PPM")
BITS_PER_SAMPLE, SAMPLE_FORMAT = 258, 339  # TIFF tags; SampleFormat 1 = unsigned, 2 = signed, 3 = float
BACKGROUND = (255, 255, 255, 255)  # opaque white under transparent pixels
_LAYOUT = "a folder of images, either directly inside or in one subfolder per class"


def _scan(root: Path) -> tuple[list[Path], list[str], dict[str, str], dict[str, str]]:
    """Image files under root, relative to it; its first-level folders; files and folders left out, with why.

    Folder symlinks are followed (rglob does not), each real folder once: a link to a folder that is read
    elsewhere (a loop back to an ancestor, or a second class pointing at the same images) is left out and
    listed, since reading it again would repeat its images, possibly under another label. Real folders are
    read before any link, so a link never wins over the folder it points to.
    """
    files, subfolders, bad_files, bad_folders = [], [], {}, {}
    seen: dict[str, PurePosixPath] = {}  # real folder -> where it is read, relative to root
    real, linked = deque([(str(root), PurePosixPath())]), deque()
    while real or linked:
        path, rel = real.popleft() if real else linked.popleft()
        target = os.path.realpath(path)
        if target in seen:
            where = seen[target]
            bad_folders[f"{rel}/"] = (
                f"symlink loop: links back to {f'{where}/' if where.parts else 'data.path'}"
                if where in rel.parents
                else f"links to a folder already read as {where}/"
            )
            continue
        seen[target] = rel
        if len(rel.parts) == 1:
            subfolders.append(rel.name)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:  # e.g. no read permission: its images would be missing without a word
            bad_folders[f"{rel}/"] = f"cannot be listed: {exc.strerror}"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child, suffix = rel / entry.name, Path(entry.name).suffix.lower()
            if entry.is_symlink() and not os.path.exists(entry.path):
                why = f"broken symlink: {os.readlink(entry.path)} does not exist or loops"
                if suffix in EXTENSIONS:
                    bad_files[str(child)] = why
                elif not suffix:  # no suffix: most likely a class folder, e.g. on a drive that is not mounted
                    bad_folders[f"{child}/"] = why
            elif entry.is_dir():
                (linked if entry.is_symlink() else real).append((entry.path, child))
            elif entry.is_file() and suffix in EXTENSIONS:
                files.append(Path(child))
    # Sorted by POSIX path so the order, and thus the seeded splits, are the same on every machine.
    return sorted(files, key=Path.as_posix), sorted(subfolders), bad_files, bad_folders


def _to_8bit(image: Image.Image) -> Image.Image:
    """Greyscale deeper than 8 bits -> 8 bits by the range its format documents; Pillow's convert clips at 255.

    16-bit ('I;16*'; Pillow also opens PGMs with maxval > 255 as 'I', scaled to 0..65535): round(v / 257), so
    65535 maps to 255. Unsigned 32-bit TIFF: round(v / 16843009), i.e. 2**32 - 1 maps to 255. 32-bit float
    TIFF: round(v * 255) over [0, 1], the range scikit-image and most tools give float images. Other floats and
    signed integers have no range to go by: refused, as guessing one would silently brighten or blacken them.
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        if not (low >= 0 and high <= 1):  # written so that NaN fails too
            raise ValueError(
                f"32-bit float pixels from {low:g} to {high:g}, outside [0, 1]: save it as 8- or 16-bit, or as "
                "floats in [0, 1]"
            )
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), mode="L")
    if image.mode.startswith("I;16"):
        values, full = np.asarray(image, dtype=np.float64), 65535
    elif image.mode == "I":
        tags = image.tag_v2 if image.format == "TIFF" else {}
        bits, sample_format = tags.get(BITS_PER_SAMPLE, (16,))[0], tags.get(SAMPLE_FORMAT, (1,))[0]
        if sample_format == 2:
            raise ValueError(f"signed {bits}-bit integer pixels: save it as unsigned 8- or 16-bit")
        full = 2**bits - 1
        # Pillow keeps unsigned 32-bit TIFF pixels in a signed int32: read the same bits as unsigned.
        values = np.asarray(image).view(np.uint32 if bits == 32 else np.int32).astype(np.float64)
    else:
        return image
    return Image.fromarray(np.rint(np.clip(values, 0, full) / (full // 255)).astype(np.uint8), mode="L")


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
            # Pillow picks the decoder by content, not name: a file named .png may be any format it knows
            # (EPS hands the file to Ghostscript), so only the formats EXTENSIONS promise are decoded.
            if image.format not in FORMATS:
                raise ValueError(f"its content is {image.format}, not one of {', '.join(FORMATS)}")
            if min(image.size) < MIN_SIDE:
                raise ValueError(f"{image.size[0]}x{image.size[1]} pixels, under {MIN_SIDE} a side")
            if getattr(image, "is_animated", False) and image.format != "MPO":
                raise ValueError(
                    f"animated or multi-page {image.format} of {image.n_frames} frames: save the frame you mean "
                    "as a file of its own"
                )
            # Cameras store a picture as the sensor read it plus an EXIF Orientation; viewers apply it.
            # In place: a transposed copy would lose the TIFF tags that _to_8bit reads the pixels' range from.
            ImageOps.exif_transpose(image, in_place=True)
            flat = _flatten_alpha(_to_8bit(image))
            return np.asarray(flat.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _why(exc: Exception) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, OSError) and exc.strerror:  # e.g. "Permission denied", without the path the listing has
        return exc.strerror
    return str(exc).split(" (")[0] or type(exc).__name__  # e.g. "image file is truncated"


def _listing(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load(cfg: Settings) -> RawData:
    root = Path(cfg.data.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root} is not an existing folder: set data.path to {_LAYOUT}")
    files, subfolders, skipped, skipped_folders = _scan(root)
    loose = [f.as_posix() for f in files if len(f.parts) == 1]
    if loose and any(len(f.parts) > 1 for f in files):
        raise DataError(
            f"{root} has class subfolders ({', '.join(subfolders)}) and also images outside them "
            f"({_listing(loose)}): move those into a class subfolder or out of data.path"
        )
    mode = "L" if cfg.data.channels == 1 else "RGB"
    # Decoded pixels go straight to an unnamed scratch file beside the download cache (not /tmp, often held
    # in RAM), mapped once complete: preparing a folder larger than memory holds one image at a time.
    scratch = Path(cfg.data.root)
    scratch.mkdir(parents=True, exist_ok=True)
    pixels = tempfile.TemporaryFile(dir=scratch)
    read = {}  # file -> md5, in the order its pixels were written
    for rel in files:
        try:
            data = (root / rel).read_bytes()
            image = _read(data, mode, cfg.data.image_size)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            skipped[rel.as_posix()] = _why(exc)
            continue
        pixels.write((image[None] if cfg.data.channels == 1 else image.transpose(2, 0, 1)).tobytes())
        read[rel] = md5_bytes(data)
    classes = sorted({rel.parts[0] for rel in read if len(rel.parts) > 1})
    empty = [] if loose else [d for d in subfolders if d not in classes]  # no usable image inside
    left_out = {**skipped, **skipped_folders, **{f"{d}/": "no usable image" for d in empty}}
    problems = [f"{path} ({why})" for path, why in left_out.items()]
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
    pixels.flush()
    stacked = map_file(pixels).view(len(read), cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    pixels.close()  # the map keeps the file until it is dropped
    labels = [classes.index(rel.parts[0]) if classes else 0 for rel in read]
    return RawData(
        train=Split(stacked, torch.tensor(labels, dtype=torch.int64)),
        test=None,
        max_value=255,
        source=str(root.resolve()),
        source_md5={rel.as_posix(): md5 for rel, md5 in read.items()},
        classes=classes or [root.resolve().name],
        extra={
            "image_size": cfg.data.image_size,
            "channels": cfg.data.channels,
            "skipped_files": skipped,
            "skipped_folders": skipped_folders,
            "empty_class_folders": empty,
        },
    )
