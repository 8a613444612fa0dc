"""The prepared dataset on disk: dataset.pt (plain uint8/int64 tensors) and manifest.json, written atomically."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.core import atomic
from genlab.data.checksums import md5_bytes
from genlab.data.splits import Split
from genlab.core.errors import DataError

DATA_FILE = "dataset.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1  # of the prepared data and of the token data (genlab.data.tokens)
SPLITS = ("train", "val", "test")
_FIX = "run `dvc repro download` to prepare it again"


@dataclass(frozen=True)
class PreparedData:
    train: Split
    val: Split
    test: Split
    max_value: int  # the raw pixel value that means 1.0
    manifest: dict

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


def write_prepared(out_dir: str | Path, splits: dict[str, Split], manifest: dict) -> dict:
    """Write the data file, then the manifest that vouches for it; returns the completed manifest."""
    tensors = {f"{name}_{part}": getattr(splits[name], part) for name in SPLITS for part in ("images", "labels")}
    return write_tensors(out_dir, tensors, manifest, "prepared dataset")


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


def load_prepared(out_dir: str | Path) -> PreparedData:
    tensors, manifest = read_tensors(out_dir, "prepared data", _FIX)
    try:
        splits = {name: Split(tensors[f"{name}_images"], tensors[f"{name}_labels"]) for name in SPLITS}
    except KeyError as exc:
        raise DataError(f"prepared data in {out_dir} lacks {exc}: {_FIX}") from None
    for name, split in splits.items():
        ok = (
            split.images.dtype == torch.uint8
            and split.labels.dtype == torch.int64
            and list(split.images.shape[1:]) == manifest["image_shape"]
            and split.images.shape[0] == len(split) == manifest["split_sizes"][name]
        )
        if not ok:
            raise DataError(f"prepared data file {Path(out_dir) / DATA_FILE}: split {name} does not match {MANIFEST_FILE}: {_FIX}")
    return PreparedData(**splits, max_value=int(manifest["max_value"]), manifest=manifest)
