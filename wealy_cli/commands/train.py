"""``wealy train``: train a WEALY model on a feature store."""

from __future__ import annotations

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.model.options import TrainRun


class TrainSettings(CommandSettings, TrainRun):
    section = "train"


@command(TrainSettings)
def train(settings: TrainSettings) -> None:
    """Train a WEALY model contrastively on a feature store; checkpoints go to --output."""
    from wealy_cli.model.training import run_training

    def started(summary: str) -> None:
        write_resolved(settings, settings.run_dir(), "settings.yaml")
        ui.console.print(summary, highlight=False)

    result = run_training(settings, on_start=started)
    if result is not None:
        ui.show(ui.key_value_table(f"train {settings.run_dir()}", {
            "epochs": result.epochs, "best epoch": result.best_epoch, "best val MAP": result.best_map,
            "stopped": result.stop_reason}))
