"""``wealy distances``: the all-against-all distance matrix of a split, with version references."""

from __future__ import annotations

from wealy_cli.commands.evaluate import published_model
from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.retrieval.options import DistancesRun


class DistancesSettings(CommandSettings, DistancesRun):
    section = "distances"


@command(DistancesSettings, prepare=published_model)
def distances(settings: DistancesSettings) -> None:
    """Write the distance matrix of a split (rows = queries, columns = candidates, same versions),
    with query and candidate references (clique, version) and metadata."""
    from wealy_cli.ranking.matrixfile import output_format
    from wealy_cli.retrieval.evaluate import write_distances

    path = settings.output
    fmt = output_format(path, settings.format)
    result = write_distances(settings, fmt)
    if result is None:  # a process other than rank 0: rank 0 writes and reports
        return
    shape, metrics = result
    if metrics is not None:
        ui.show(ui.metrics_table(f"CLEWS {settings.redux}, {settings.dataset}/{settings.split}: "
                                 f"{metrics.n_queries} queries", {"CLEWS": metrics.to_dict()}))
    write_resolved(settings, path.parent, name=f"{path.name}.settings.yaml")
    ui.console.print(f"wrote {path} ({fmt}, {shape[0]}×{shape[1]})", highlight=False)
