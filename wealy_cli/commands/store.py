"""``wealy store info|verify|show``: inspect, check and read an embedding store."""

from __future__ import annotations

import csv
import json
import sys
from typing import Literal

import typer

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, ExistingDir, argument, option

app = typer.Typer(help="Inspect, check and read embedding stores.", no_args_is_help=True)


class StoreSettings(CommandSettings):
    section = "store"
    directory: ExistingDir = argument(help="Store directory.")
    values: bool = option(True, "verify: also scan every value for NaN/Inf.")


class StoreShowSettings(CommandSettings):
    section = "store_show"
    directory: ExistingDir = argument(help="Store directory.")
    keys: list[str] = argument([], help="Keys to show (<clique>/<version>); none = every item.")
    format: Literal["table", "csv", "json"] = option("table", "table (on screen), or csv / json on stdout "
                                                    "for export.")


@app.command("info")
@command(StoreSettings)
def info(settings: StoreSettings) -> None:
    """Items, dim, row statistics, size, shards, settings and failures of a store."""
    from wealy_cli.core.store import Store, store_info

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
@command(StoreSettings)
def verify(settings: StoreSettings) -> None:
    """Check that every shard opens, keys are unique, dims agree and values are finite.

    Exits with code 1 when something is wrong."""
    from wealy_cli.core.store import verify_store

    report = verify_store(settings.directory, check_values=settings.values)
    rows = [("problem", p) for p in report.problems] + [("warning", w) for w in report.warnings]
    ui.show(ui.table(f"verify {settings.directory}: {report.items} items in {report.shards} shards",
                     ("status", "detail"), rows or [("ok", "no problems found")]))
    if not report.ok:
        raise typer.Exit(1)


@app.command("show")
@command(StoreShowSettings)
def show(settings: StoreShowSettings) -> None:
    """What was transcribed: text, language, duration, rows and windows of stored items."""
    from wealy_cli.core.store import Store, describe_items

    items = describe_items(Store(settings.directory), settings.keys or None)
    if settings.format == "json":
        json.dump(items, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif settings.format == "csv":
        columns = list(dict.fromkeys(k for item in items for k in item if k != "windows"))
        writer = csv.DictWriter(sys.stdout, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(items)
    else:
        columns = ("key", "language", "duration", "rows", "windows", "text")
        ui.show(ui.table(f"{len(items)} item(s) of {settings.directory}", columns,
                         [(i["key"], i.get("language", "-"), i.get("duration", "-"), i["rows"],
                           len(i.get("windows") or []), i.get("text", "")) for i in items]))

