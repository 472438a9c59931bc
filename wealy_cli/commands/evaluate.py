"""``wealy evaluate``: evaluate a trained model on a dataset split."""

from __future__ import annotations

from ..errors import NotYetAvailable


def evaluate() -> None:
    """Evaluate a trained model on a dataset split (not available yet)."""
    raise NotYetAvailable("'wealy evaluate' is not available in this release yet (tracked in issue 5)")
