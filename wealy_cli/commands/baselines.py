"""``wealy baselines``: transcription baselines and oracle bounds."""

from __future__ import annotations

from ..errors import NotYetAvailable


def baselines() -> None:
    """Transcription baselines and oracle bounds (not available yet)."""
    raise NotYetAvailable("'wealy baselines' is not available in this release yet (tracked in issue 6)")
