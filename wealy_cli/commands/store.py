"""``wealy store info|verify``: inspect and check an embedding store."""

from __future__ import annotations

from pathlib import Path

import typer

from wealy_cli.core import ui
from wealy_cli.core.settings import ExistingDir, WealySettings, load_settings
from wealy_cli.core.store import Store, store_info, verify_store

app = typer.Typer(help="Inspect and check embedding stores.", no_args_is_help=True)


class StoreSettings(WealySettings):
    section = "store"
    arguments = ("directory",)
    directory: ExistingDir
    values: bool = True


@app.command("info")
def info(directory: Path = typer.Argument(..., help="Store directory."),
         config: Path = typer.Option(None, "--config", help="YAML settings file.")) -> None:
    """Items, dim, row statistics, size, shards, settings and failures of a store."""
    settings = load_settings(StoreSettings, config, directory=directory)
    store = Store(settings.directory)
    data = store_info(store)
    extraction = data.pop("settings")
    ui.show(ui.key_value_table(f"store {settings.directory}", data))
    if extraction:
        ui.show(ui.key_value_table("extraction settings", extraction))
    failures = store.failures()
    if failures:
        rows = [(k, r.get("reason", "")) for k, r in list(failures.items())[:20]]
        ui.show(ui.table(f"failures ({len(failures)}, first 20)", ("key", "reason"), rows))


@app.command("verify")
def verify(directory: Path = typer.Argument(..., help="Store directory."),
           values: bool = typer.Option(None, "--values/--no-values",
                                       help="Also scan every value for NaN/Inf. [default: values]"),
           config: Path = typer.Option(None, "--config", help="YAML settings file.")) -> None:
    """Check that every shard opens, keys are unique, dims agree and values are finite.

    Exits with code 1 when something is wrong."""
    settings = load_settings(StoreSettings, config, directory=directory, values=values)
    report = verify_store(settings.directory, check_values=settings.values)
    rows = [("problem", p) for p in report.problems] + [("warning", w) for w in report.warnings]
    ui.show(ui.table(f"verify {settings.directory}: {report.items} items in {report.shards} shards",
                     ("status", "detail"), rows or [("ok", "no problems found")]))
    if not report.ok:
        raise typer.Exit(1)
