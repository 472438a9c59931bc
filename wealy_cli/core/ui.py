"""Terminal output shared by all commands: one console, progress bars, summary tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def progress(transient: bool = False) -> Progress:
    """A rich progress bar; disabled (prints nothing) under --quiet."""
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=is_quiet(), transient=transient,
    )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    tab = Table(title=title, title_justify="left")
    for col in columns:
        tab.add_column(col)
    for row in rows:
        tab.add_row(*(_fmt(v) for v in row))
    return tab


def key_value_table(title: str, data: dict[str, Any]) -> Table:
    return table(title, ("", "value"), data.items())


def show(renderable: Any) -> None:
    """Print a result (tables, summaries) to stdout even under --quiet."""
    Console().print(renderable)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)
