"""``wealy demo``: the whole pipeline on the bundled collection, offline, in a few minutes."""

from __future__ import annotations

import json

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.demo import DemoOptions


class DemoSettings(CommandSettings, DemoOptions):
    section = "demo"


@command(DemoSettings)
def demo(settings: DemoSettings) -> None:
    """Extract → SBERT → baselines → train → evaluate → fuse on a small collection, then compare.

    Every step is the `wealy` command a user would type; finished steps are skipped on a rerun."""
    from wealy_cli.cli import main  # the demo runs the real commands
    from wealy_cli.demo import Demo, Step, plot_comparison

    run = settings.run_dir
    pipeline = Demo(settings, quiet=ui.is_quiet())

    def report(step: Step) -> None:
        what = "done before, skipped" if step.skipped else f"{step.seconds:.1f} s"
        ui.console.print(f"[bold]step[/] {step.name}: {what}", highlight=False)

    steps = pipeline.run(main, on_step=report)
    write_resolved(settings, run)
    rows = pipeline.comparison()
    figure = plot_comparison(rows, run / "comparison.png", title=f"wealy, {pipeline.collection.parent.name}")
    training = pipeline.training()
    (run / "comparison.json").write_text(json.dumps({"rows": rows, "training": training, "steps": [
        {"step": s.name, "seconds": s.seconds, "skipped": s.skipped} for s in steps]}, indent=2))
    ui.show(ui.table("steps", ("step", "time"), [
        (s.name, "skipped (done)" if s.skipped else f"{s.seconds:.1f} s") for s in steps]))
    ui.show(ui.metrics_table(f"demo: {pipeline.collection.name}, test split",
                             {f"{r['method']} ({r['kind']})": r for r in rows}))
    ui.console.print(f"training: best epoch {training['best_epoch']} of {training['epochs']}, validation MAP "
                     f"{training['val_map_untrained']:.3f} untrained → {training['val_map_best']:.3f}", highlight=False)
    ui.console.print(f"figure: {figure}\nresults: {run / 'comparison.json'}", highlight=False)
