"""``wealy distances``: write the distance matrix of a split."""

from __future__ import annotations

from ..errors import NotYetAvailable


def distances() -> None:
    """Write the distance matrix of a split (not available yet)."""
    raise NotYetAvailable("'wealy distances' is not available in this release yet (tracked in issue 5)")
