"""``wealy search``: which songs of an index is each query a version of?"""

from __future__ import annotations

import sys

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings
from wealy_cli.retrieval.options import SearchRun


class SearchSettings(CommandSettings, SearchRun):
    section = "search"


@command(SearchSettings)
def search(settings: SearchSettings) -> None:
    """Rank the indexed songs for audio files, a song of the index (--key) or a CSV of audio paths
    (--queries): candidates from the nearest chunks, then exact song distances, as 'wealy evaluate'.

    Prints a table per query, or JSON / CSV on stdout (--format)."""
    from wealy_cli.retrieval.search import results_csv, results_json, results_tables, run_search

    results = run_search(settings)
    if settings.format == "json":
        sys.stdout.write(results_json(results) + "\n")
    elif settings.format == "csv":
        sys.stdout.write(results_csv(results))
    else:
        for table in results_tables(results):
            ui.show(table)
