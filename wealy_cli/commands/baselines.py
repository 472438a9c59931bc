"""``wealy baselines``: transcription baselines and oracle bounds."""

from __future__ import annotations

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.retrieval.options import BaselinesRun


class BaselinesSettings(CommandSettings, BaselinesRun):
    section = "baselines"


@command(BaselinesSettings)
def baselines(settings: BaselinesSettings) -> None:
    """Transcription baselines (SBERT, TF-IDF, BM25) and oracle bounds on a dataset split.

    Writes baseline_results.json, comparison_table.txt and settings.yaml to --output."""
    from wealy_cli.retrieval.baselines import run_split_baselines

    results, n_versions = run_split_baselines(settings)
    write_resolved(settings, settings.output)
    ui.show(ui.metrics_table(f"baselines on {settings.dataset}/{settings.split} ({n_versions} versions)", results))
