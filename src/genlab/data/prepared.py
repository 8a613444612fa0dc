"""The prepared dataset on disk: dataset.pt (plain uint8/int64 tensors) and manifest.json, written atomically."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab import atomic
from genlab.data.checksums import md5_bytes
from genlab.data.splits import Split
from genlab.errors import DataError

DATA_FILE = "dataset.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
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


def write_prepared(out_dir: str | Path, splits: dict[str, Split], manifest: dict) -> dict:
    """Write the data file, then the manifest that vouches for it; returns the completed manifest."""
    buffer = io.BytesIO()
    tensors = {f"{name}_{part}": getattr(splits[name], part) for name in SPLITS for part in ("images", "labels")}
    torch.save(tensors, buffer)
    data = buffer.getvalue()
    manifest = {**manifest, "prepared_md5": md5_bytes(data)}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(out / DATA_FILE, data)
        atomic.write_bytes(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise DataError(
            f"cannot write the prepared dataset to {out}: {exc}; check that it is writable and has space"
        ) from exc
    return manifest


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"prepared dataset manifest {path} is missing: {_FIX}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"prepared dataset manifest {path} is unreadable ({exc}): {_FIX}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DataError(f"{path} has format_version {found!r}, this code reads {FORMAT_VERSION}: {_FIX}")
    return manifest


def load_prepared(out_dir: str | Path) -> PreparedData:
    out = Path(out_dir)
    manifest = _read_manifest(out / MANIFEST_FILE)
    path = out / DATA_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"prepared data file {path} is missing or unreadable ({exc.strerror}): {_FIX}") from None
    expected, got = manifest.get("prepared_md5"), md5_bytes(data)
    if got != expected:
        raise DataError(
            f"prepared data file {path} is corrupted: md5 {got}, {MANIFEST_FILE} expects {expected}: {_FIX}"
        )
    try:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        splits = {name: Split(tensors[f"{name}_images"], tensors[f"{name}_labels"]) for name in SPLITS}
    except Exception as exc:  # any unpickling failure means the same thing here: the file is unusable
        raise DataError(f"prepared data file {path} cannot be read ({exc}): {_FIX}") from exc
    for name, split in splits.items():
        ok = (
            split.images.dtype == torch.uint8
            and split.labels.dtype == torch.int64
            and list(split.images.shape[1:]) == manifest["image_shape"]
            and split.images.shape[0] == len(split) == manifest["split_sizes"][name]
        )
        if not ok:
            raise DataError(f"prepared data file {path}: split {name} does not match {MANIFEST_FILE}: {_FIX}")
    return PreparedData(**splits, max_value=int(manifest["max_value"]), manifest=manifest)
