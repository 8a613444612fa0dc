"""md5 of files and bytes, read in chunks so that large archives do not sit in memory."""

import hashlib
from pathlib import Path


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(*paths: Path) -> str:
    """md5 of the file, or of several files' bytes one after the other."""
    digest = hashlib.md5(usedforsecurity=False)
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
