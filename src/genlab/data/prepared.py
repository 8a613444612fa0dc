"""The prepared dataset on disk, written atomically: images.u8 (every split's uint8 images, train then val then
test, one flat C-order array), labels.i64 and manifest.json, which vouches for both with their md5.

Stages map images.u8 instead of loading it, so a dataset larger than memory trains: the training loop gathers
its batches through `Rows`, which keeps the process's resident memory bounded whatever the dataset's size.
The token data (genlab.data.tokens) is small and keeps one torch file (DATA_FILE).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genlab.core import atomic
from genlab.data.checksums import md5_bytes, md5_file
from genlab.data.splits import Split
from genlab.core.errors import DataError

IMAGES_FILE, LABELS_FILE = "images.u8", "labels.i64"
DATA_FILE = "dataset.pt"  # the token data
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2  # of the prepared data and of the token data; 2: images memory-mapped from IMAGES_FILE
SPLITS = ("train", "val", "test")
_FIX = "run `dvc repro download` to prepare it again"
CHUNK = 8 << 20  # bytes written at a time when streaming a prepared file
PAGE_BUDGET = 64 << 20  # prepared images up to this size are gathered from their map, larger ones read (Rows)


class Rows:
    """How the training loop gathers a batch of stored images: from a dataset under PAGE_BUDGET bytes by
    indexing its map; from a larger one by reading each row with pread. A mapped page stays in the process's
    RSS once touched (and a fault maps far more than one row), so an epoch of random batches would make the
    whole dataset resident; pread leaves the pages to the kernel's cache, and RSS stays bounded whatever the
    dataset's size."""

    def __init__(self, path: Path | None = None):
        self.fd = os.open(path, os.O_RDONLY) if path is not None and path.stat().st_size > PAGE_BUDGET else None

    def gather(self, stored: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """stored[index] for `stored`, a view of the mapped file (or any tensor, when nothing was mapped)."""
        if self.fd is None or len(index) == 0:
            return stored[index]
        out = torch.empty((len(index), *stored.shape[1:]), dtype=stored.dtype)
        row, base, view = stored[0].nbytes, stored.storage_offset() * stored.element_size(), out.numpy().data.cast("B")
        rows = index.tolist()
        if rows == list(range(rows[0], rows[0] + len(rows))):  # consecutive (a validation batch): one read
            runs = [(0, rows[0], len(rows))]
        else:
            runs = [(k, i, 1) for k, i in enumerate(rows)]
        for k, i, count in runs:
            if os.preadv(self.fd, [view[k * row : (k + count) * row]], base + i * row) != count * row:
                raise DataError(f"prepared data file shrank while being read: {_FIX}")
        return out


def map_file(file) -> torch.Tensor:
    """A flat uint8 tensor over a whole file (a path or an open binary file), copy-on-write so torch may hold
    it as writable, though nothing writes to it."""
    with open(file, "rb") if isinstance(file, (str, Path)) else contextlib.nullcontext(file) as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # holds its own descriptor
    return torch.frombuffer(mapped, dtype=torch.uint8)


@dataclass(frozen=True)
class PreparedData:
    train: Split
    val: Split
    test: Split
    max_value: int  # the raw pixel value that means 1.0
    manifest: dict
    rows: Rows = field(default_factory=Rows, compare=False, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def checksum(self) -> str:
        return self.manifest["prepared_md5"]

    @property
    def levels(self) -> int:
        return self.max_value + 1

    def to_unit(self, images_u8: torch.Tensor) -> torch.Tensor:
        return images_u8.to(torch.float32) / self.max_value


def write_tensors(out_dir: str | Path, tensors: dict[str, torch.Tensor], manifest: dict, what: str) -> dict:
    """Write DATA_FILE, then the MANIFEST_FILE that vouches for it (with its md5 as `prepared_md5`)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    data = buffer.getvalue()
    manifest = {**manifest, "prepared_md5": md5_bytes(data)}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(out / DATA_FILE, data)
        atomic.write_bytes(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise DataError(f"cannot write the {what} to {out}: {exc}; check that it is writable and has space") from exc
    return manifest


def read_tensors(out_dir: str | Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, manifest) written by `write_tensors`, the data file checked against the manifest's md5."""
    out = Path(out_dir)
    manifest = _read_manifest(out / MANIFEST_FILE, what, fix)
    path = out / DATA_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{what} file {path} is missing or unreadable ({exc.strerror}): {fix}") from None
    expected, got = manifest.get("prepared_md5"), md5_bytes(data)
    if got != expected:
        raise DataError(f"{what} file {path} is corrupted: md5 {got}, {MANIFEST_FILE} expects {expected}: {fix}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), manifest
    except Exception as exc:  # any unpickling failure means the same thing here: the file is unusable
        raise DataError(f"{what} file {path} cannot be read ({exc}): {fix}") from exc


def _read_manifest(path: Path, what: str, fix: str) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} manifest {path} is missing: {fix}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{what} manifest {path} is unreadable ({exc}): {fix}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DataError(f"{path} has format_version {found!r}, this code reads {FORMAT_VERSION}: {fix}")
    return manifest


def write_prepared(out_dir: str | Path, parts: dict[str, tuple[Split, torch.Tensor]], manifest: dict) -> dict:
    """Write each split's images (split name -> (source, indices into it)), streamed CHUNK bytes at a time from
    the source (which may itself be a memory map), then the labels, then the manifest that vouches for both;
    returns the completed manifest. Nothing in out_dir changes unless every file was written."""
    out, digest = Path(out_dir), hashlib.md5(usedforsecurity=False)
    labels = torch.cat([source.labels[index] for source, index in (parts[name] for name in SPLITS)])
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out / IMAGES_FILE) as tmp, open(tmp, "wb") as f:
            for name in SPLITS:
                source, index = parts[name]
                per_chunk = max(1, CHUNK // max(1, source.images[0].numel()))
                for i in range(0, len(index), per_chunk):
                    data = source.images[index[i : i + per_chunk]].numpy().tobytes()
                    digest.update(data)
                    f.write(data)
        data = labels.numpy().astype("<i8").tobytes()
        digest.update(data)
        atomic.write_bytes(out / LABELS_FILE, data)
        manifest = {**manifest, "prepared_md5": digest.hexdigest()}
        atomic.write_bytes(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise DataError(f"cannot write the prepared dataset to {out}: {exc}; check that it is writable and has space") from exc
    return manifest


def load_prepared(out_dir: str | Path) -> PreparedData:
    """The prepared splits as views of the mapped images.u8 (labels in memory), both files checked against
    the manifest's sizes and md5 first; a file that does not match is refused, never half-used."""
    out = Path(out_dir)
    manifest = _read_manifest(out / MANIFEST_FILE, "prepared data", _FIX)
    try:
        shape, sizes = [int(d) for d in manifest["image_shape"]], [int(manifest["split_sizes"][s]) for s in SPLITS]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{out / MANIFEST_FILE} lacks a valid image_shape or split_sizes ({exc}): {_FIX}") from None
    n, per_image = sum(sizes), int(np.prod(shape))
    files = [out / IMAGES_FILE, out / LABELS_FILE]
    for path, expected in zip(files, (n * per_image, n * 8)):
        try:
            got = path.stat().st_size
        except OSError as exc:
            raise DataError(f"prepared data file {path} is missing or unreadable ({exc.strerror}): {_FIX}") from None
        if got != expected:
            raise DataError(
                f"prepared data file {path} has {got} bytes, {MANIFEST_FILE} implies {expected} "
                f"({n} images of {shape}): {_FIX}"
            )
    got, expected = md5_file(*files), manifest.get("prepared_md5")
    if got != expected:
        raise DataError(f"prepared data in {out} is corrupted: md5 {got}, {MANIFEST_FILE} expects {expected}: {_FIX}")
    images = map_file(files[0]).view(n, *shape)
    labels = torch.from_numpy(np.fromfile(files[1], dtype="<i8").astype(np.int64))
    ends = np.cumsum(sizes).tolist()
    splits = {name: Split(images[end - size : end], labels[end - size : end]) for name, size, end in zip(SPLITS, sizes, ends)}
    return PreparedData(**splits, max_value=int(manifest["max_value"]), manifest=manifest, rows=Rows(files[0]))
