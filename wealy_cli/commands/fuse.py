"""``wealy fuse``: fuse distance matrices of several modalities."""

from __future__ import annotations

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.ranking.options import FuseRun


class FuseSettings(CommandSettings, FuseRun):
    section = "fuse"


@command(FuseSettings)
def fuse(settings: FuseSettings) -> None:
    """Fuse distance matrices: m1 + alpha·m2 (+ one weight per further input), metrics per weight.

    Writes fusion_results.csv, fusion_map.png, fusion_summary.json and settings.yaml to --output."""
    from wealy_cli.ranking.fusion import fuse_files

    report = fuse_files(settings)
    write_resolved(settings, report.output)
    report_rows = report.aligned.report
    ui.show(ui.table("alignment on version keys", list(report_rows[0]), [r.values() for r in report_rows]))
    extra = ", ".join(report.names[1:])
    results = {("★ " if i == report.best else "") + ", ".join(f"{w:g}" for w in r.weights): r.metrics
               for i, r in enumerate(report.rows)}
    ui.show(ui.metrics_table(f"fusion of {', '.join(report.names)} (normalize={settings.normalize}; weight of "
                             f"{extra}; ★ best MAP)", results))
    ui.console.print(f"wrote {report.output}", highlight=False)
