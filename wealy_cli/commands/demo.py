"""``wealy demo``: the whole pipeline on the bundled collection, offline, in a few minutes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from pydantic import Field

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CreatableDir, ExistingFile, WealySettings, load_settings, write_resolved
from wealy_cli.demo import Demo, DemoOptions, Step, bundled_collection, plot_comparison


class DemoSettings(WealySettings):
    section = "demo"
    collection: ExistingFile | None = None
    run_dir: CreatableDir = Path("runs/demo")
    train_minutes: float = Field(1.5, gt=0)
    max_epochs: int = Field(150, ge=1)
    whisper_model: str | None = None
    seed: int = 42
    fresh: bool = False


def demo(
    collection: Path = typer.Option(None, "--collection", help="A collection CSV (clique,version,path,split). "
                                    "[default: the bundled 24-song collection]"),
    run_dir: Path = typer.Option(None, "--run-dir", "-o", help="Where every step writes. [default: runs/demo]"),
    train_minutes: float = typer.Option(None, "--train-minutes", help="Training time limit. [default: 1.5]"),
    max_epochs: int = typer.Option(None, "--max-epochs", help="Training epochs at most. [default: 150]"),
    whisper_model: str = typer.Option(None, "--whisper-model", help="Whisper model for extraction. "
                                      "[default: the packaged tiny.en]"),
    seed: int = typer.Option(None, "--seed", help="Seed of training and the random baselines. [default: 42]"),
    fresh: bool = typer.Option(None, "--fresh/--resume", help="Start over (delete the run directory) instead "
                               "of skipping finished steps. [default: resume]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Extract → SBERT → baselines → train → evaluate → fuse on a small collection, then compare.

    Every step is the `wealy` command a user would type; finished steps are skipped on a rerun."""
    from wealy_cli.cli import main  # the demo runs the real commands

    settings = load_settings(DemoSettings, config, collection=collection, run_dir=run_dir,
                             train_minutes=train_minutes, max_epochs=max_epochs, whisper_model=whisper_model,
                             seed=seed, fresh=fresh)
    run = settings.run_dir
    if settings.fresh and run.exists():
        if not (run / ".done").is_dir():
            raise UserError(f"--fresh: {run} is not a demo run directory (no .done/); not deleting it")
        shutil.rmtree(run)
    opts = DemoOptions(collection=settings.collection or bundled_collection(), run_dir=run,
                       train_minutes=settings.train_minutes, max_epochs=settings.max_epochs,
                       whisper_model=settings.whisper_model, seed=settings.seed, quiet=ui.is_quiet())
    pipeline = Demo(opts)

    def report(step: Step) -> None:
        what = "done before, skipped" if step.skipped else f"{step.seconds:.1f} s"
        ui.console.print(f"[bold]step[/] {step.name}: {what}", highlight=False)

    steps = pipeline.run(main, on_step=report)
    write_resolved(settings, run)
    rows = pipeline.comparison()
    figure = plot_comparison(rows, run / "comparison.png", title=f"wealy, {opts.collection.parent.name}")
    (run / "comparison.json").write_text(json.dumps({"rows": rows, "steps": [
        {"step": s.name, "seconds": s.seconds, "skipped": s.skipped} for s in steps]}, indent=2))
    ui.show(ui.table("steps", ("step", "time"), [
        (s.name, "skipped (done)" if s.skipped else f"{s.seconds:.1f} s") for s in steps]))
    ui.show(ui.table(f"demo: {opts.collection.name}, test split", ("method", "kind", "MAP", "MR1", "ARP (%)"), [
        (r["method"], r["kind"], f"{r['map']:.3f} ± {r.get('map_ci', 0):.3f}", f"{r['mr1']:.2f}",
         f"{r['arp']:.2f}") for r in rows]))
    ui.console.print(f"figure: {figure}\nresults: {run / 'comparison.json'}", highlight=False)
