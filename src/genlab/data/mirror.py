"""data.mirror: a local directory or a URL that replaces a dataset's official download location.

Files from a directory (a path or a file:// URL) are copied and checked against the same md5s
torchvision enforces on a network download, so a mirror can never bypass verification.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from torchvision.datasets.utils import calculate_md5, check_integrity

from genlab.core.errors import DataError

Files = list[tuple[str, str]]  # (file name, published md5)


def resolve(mirror: str) -> tuple[str, Path | None]:
    """(URL prefix that torchvision appends file names to, the local directory or None if remote)."""
    parsed = urlparse(mirror)
    if parsed.scheme == "file":
        # torchvision cannot download file:// URLs (its progress bar reads an HTTP-only attribute).
        directory = Path(url2pathname(parsed.path))
    elif parsed.scheme:
        return (mirror if mirror.endswith("/") else mirror + "/"), None
    else:
        directory = Path(mirror).expanduser()
    directory = directory.resolve()
    return directory.as_uri() + "/", directory


def md5_mismatch(name: str, where: str, expected: str, got: str, owner: str) -> DataError:
    return DataError(
        f"md5 mismatch for {name} from {where}: expected {expected} (the md5 torchvision's {owner} publishes), "
        f"got {got}; the file was not kept. Replace it with the official file, or fix data.mirror, and run again"
    )


def copy_from_directory(src: Path, dest: Path, files: Files, owner: str) -> None:
    names = ", ".join(name for name, _ in files)
    if not src.is_dir():
        raise DataError(
            f"data.mirror {src} is not an existing directory: point it at a directory holding {names}, or at a URL"
        )
    missing = [name for name, _ in files if not (src / name).is_file()]
    if missing:
        raise DataError(
            f"mirror directory {src} has no {', '.join(missing)}: "
            f"it must hold {names} (the files torchvision's {owner} downloads) side by side"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in files:
        if check_integrity(dest / name, md5):
            continue
        partial = dest / f".{name}.partial"
        try:
            shutil.copyfile(src / name, partial)
            got = calculate_md5(partial)
            if got != md5:
                raise md5_mismatch(name, str(src), md5, got, owner)
            os.replace(partial, dest / name)
        except OSError as exc:
            raise DataError(f"cannot copy {src / name} to {dest}: {exc}; check that data.root is writable") from exc
        finally:
            partial.unlink(missing_ok=True)
