"""``wealy train``: train a WEALY model on a feature store."""

from __future__ import annotations

from ..errors import NotYetAvailable


def train() -> None:
    """Train a WEALY model on a feature store (not available yet)."""
    raise NotYetAvailable("'wealy train' is not available in this release yet (tracked in issue 4)")
