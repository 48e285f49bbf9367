"""File digests: the sha256 of a file's bytes, or the one recorded in its ``<name>.sha256`` sidecar."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sidecar_path(path: str | Path) -> Path:
    """Where a file's recorded digest lives: ``<name>.sha256`` next to it (checkpoints write one)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_sha256(path: str | Path) -> str:
    """The digest in the file's sidecar when it has one (no re-read of a large checkpoint), else
    :func:`file_sha256`."""
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return sidecar.read_text().strip().split()[0]
    return file_sha256(path)
