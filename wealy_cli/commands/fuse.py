"""``wealy fuse``: fuse distance matrices of several modalities."""

from __future__ import annotations

from ..errors import NotYetAvailable


def fuse() -> None:
    """Fuse distance matrices of several modalities (not available yet)."""
    raise NotYetAvailable("'wealy fuse' is not available in this release yet (tracked in issue 6)")
