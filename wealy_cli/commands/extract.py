"""``wealy extract whisper|sbert|clews``: features from audio or transcriptions into a store."""

from __future__ import annotations

import typer

from ..errors import NotYetAvailable

app = typer.Typer(help="Extract features into an embedding store.", no_args_is_help=True)


@app.command("whisper")
def whisper() -> None:
    """Whisper decoder features and transcriptions (not available yet)."""
    raise NotYetAvailable("'wealy extract whisper' is not available in this release yet (tracked in issue 3)")


@app.command("sbert")
def sbert() -> None:
    """SBERT embeddings of stored transcriptions (not available yet)."""
    raise NotYetAvailable("'wealy extract sbert' is not available in this release yet (tracked in issue 3)")


@app.command("clews")
def clews() -> None:
    """CLEWS audio embeddings (not available yet)."""
    raise NotYetAvailable("'wealy extract clews' is not available in this release yet (tracked in issue 8)")
