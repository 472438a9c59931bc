"""``wealy index build|add|info``: a catalogue's songs → a search index for ``wealy search``."""

from __future__ import annotations

from typing import Any

import typer

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, ExistingDir, argument, write_resolved
from wealy_cli.retrieval.options import IndexAddRun, IndexBuildRun

app = typer.Typer(help="Build, grow and describe catalogue search indexes (for 'wealy search').",
                  no_args_is_help=True)


class IndexBuildSettings(CommandSettings, IndexBuildRun):
    section = "index_build"


class IndexAddSettings(CommandSettings, IndexAddRun):
    section = "index_add"


class IndexInfoSettings(CommandSettings):
    section = "index_info"
    index: ExistingDir = argument(help="Index directory.")


def published_model(flags: dict[str, Any]) -> dict[str, Any]:
    """With --model NAME the model sets chunk and topk (any collection may be indexed)."""
    from wealy_cli.retrieval.evaluate import published_model_flags

    return published_model_flags(flags.get("model"), flags, own_dataset=False)


@app.command("build")
@command(IndexBuildSettings, prepare=published_model)
def build(settings: IndexBuildSettings) -> None:
    """Embed every song of a feature store (or of a dataset split / catalogue CSV in it) into
    chunk embeddings, as 'wealy evaluate' does, and write a search index. Run it again to resume."""
    from wealy_cli.retrieval.index_build import build_index

    report = build_index(settings)
    if report is None:  # not rank 0 of a multi-process run: rank 0 reports
        return
    write_resolved(settings, settings.output, name="index_build.yaml")
    ui.show(ui.key_value_table(f"index {settings.output}", report.as_table()))


@app.command("add")
@command(IndexAddSettings)
def add(settings: IndexAddSettings) -> None:
    """Add a store's songs that the index does not hold yet (same checkpoint, chunking and FAISS
    index; nothing is rebuilt)."""
    from wealy_cli.retrieval.index_build import add_to_index

    report = add_to_index(settings)
    if report is None:
        return
    write_resolved(settings, settings.index, name="index_add.yaml")
    ui.show(ui.key_value_table(f"index {settings.index}", report.as_table()))


@app.command("info")
@command(IndexInfoSettings)
def info(settings: IndexInfoSettings) -> None:
    """Size, songs, chunks, kind, model and extraction settings of an index."""
    from wealy_cli.retrieval.index import Index

    index = Index(settings.index)
    ui.show(ui.key_value_table(f"index {settings.index}", index.info()))
