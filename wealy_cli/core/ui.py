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


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], no_wrap: Sequence[int] = ()) -> Table:
    """A results table; the columns in ``no_wrap`` (e.g. names a user copies) are never cut."""
    cells = [[_fmt(v) for v in row] for row in rows]
    tab = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        if i in no_wrap:
            width = max([len(col)] + [len(r[i]) for r in cells])
            tab.add_column(col, no_wrap=True, min_width=width)
        else:
            tab.add_column(col)
    for row in cells:
        tab.add_row(*row)
    return tab


def metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    """One row per method: MAP, MR1 and ARP with their 95 % intervals, and the query count.
    ``results`` maps a method name to a metrics dict (``Metrics.to_dict()``)."""
    rows = [(name, f"{m['map']:.4f} ± {m['map_ci']:.4f}", f"{m['mr1']:.2f} ± {m['mr1_ci']:.2f}",
             f"{m['arp']:.2f} ± {m['arp_ci']:.2f}", m.get("n_queries", "-")) for name, m in results.items()]
    rules = sorted({str(m["ties"]) for m in results.values() if "ties" in m})
    if rules:  # which tie rule ranked these (metrics.TIES)
        title = f"{title} [ties: {', '.join(rules)}]"
    return table(title, ("method", "MAP", "MR1", "ARP (%)", "queries"), rows)


def key_value_table(title: str, data: dict[str, Any]) -> Table:
    return table(title, ("", "value"), data.items())


def show(renderable: Any) -> None:
    """Print a result (tables, summaries) to stdout even under --quiet. Piped into a file or
    another program, lines are not folded at 80 columns."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 240))
    out.print(renderable)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)
