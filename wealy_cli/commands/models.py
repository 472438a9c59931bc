"""``wealy models list|download|upload|import``: published WEALY checkpoints."""

from __future__ import annotations

import typer

from ..errors import NotYetAvailable

app = typer.Typer(help="Published WEALY checkpoints on the Hugging Face Hub.", no_args_is_help=True)


def _later(name: str) -> None:
    raise NotYetAvailable(f"'wealy models {name}' is not available in this release yet (tracked in issue 7)")


@app.command("list")
def list_models() -> None:
    """List the published models (not available yet)."""
    _later("list")


@app.command("download")
def download() -> None:
    """Download a published model (not available yet)."""
    _later("download")


@app.command("upload")
def upload() -> None:
    """Upload a trained run (not available yet)."""
    _later("upload")


@app.command("import")
def import_checkpoint() -> None:
    """Import an original checkpoint (not available yet)."""
    _later("import")
