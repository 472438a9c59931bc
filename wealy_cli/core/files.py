"""Atomic file writes: a crash (even SIGKILL) leaves either the old file or the new one, never
a half-written file in its place."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path``, unique to this process, on the same file system."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def replace_atomically(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_atomically(path: Path, payload: bytes | str) -> Path:
    """Write ``payload`` (text is UTF-8) to ``path`` through a temporary file."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload.encode("utf-8") if isinstance(payload, str) else payload)
        replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
