"""Write-then-rename, so a crash or a bad run never leaves a half-written output behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genlab.core.errors import StorageError


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


# What a full disk looks like: ENOSPC/EDQUOT from the OS, or torch.save's zip writer reporting a short write.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("unexpected pos", "file write failed", "No space left on device")


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FULL_MESSAGES)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename.

    A full disk becomes a StorageError naming the path and the space left; `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600, which would hide the file from other users
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        if not _disk_full(exc):
            raise
        tmp_path.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        kept = f"the previous {path} is intact" if path.exists() else f"nothing was written to {path}"
        raise StorageError(
            f"disk full while writing {path} ({free / 2**20:.1f} MiB left on its filesystem): {kept}; "
            "free some space there (or move the workspace) and rerun"
        ) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    # Through a file object, torch.save names the zip's folder "archive"; given the (random) temporary
    # path it would name it after that, and two saves of the same weights would differ in their bytes.
    import torch  # here: the report and other torch-free callers of this module skip its second of import

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
