"""``wealy extract whisper|sbert|clews``: features from audio or transcriptions into a store."""

from __future__ import annotations

import typer

from wealy_cli.clews.options import ClewsExtractOptions
from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.whisper.options import SbertOptions, WhisperExtractOptions

app = typer.Typer(help="Extract features into an embedding store.", no_args_is_help=True)


class ExtractWhisperSettings(CommandSettings, WhisperExtractOptions):
    section = "extract_whisper"


class ExtractSbertSettings(CommandSettings, SbertOptions):
    section = "extract_sbert"


class ExtractClewsSettings(CommandSettings, ClewsExtractOptions):
    section = "extract_clews"


@app.command("whisper")
@command(ExtractWhisperSettings)
def whisper(settings: ExtractWhisperSettings) -> None:
    """Whisper decoder features, transcriptions and languages of a dataset into a store."""
    from wealy_cli.whisper.extract import extract_whisper

    summary = extract_whisper(settings)
    if summary is None:  # a worker process other than rank 0: rank 0 reports
        return
    write_resolved(settings, settings.output_dir(), name="extract_whisper.yaml")
    ui.show(ui.key_value_table(f"Whisper {settings.features} features in {settings.output_dir()}", summary.as_table()))
    _failures(summary.failures)
    if summary.stored + summary.skipped == 0:
        ui.console.print("error: no version could be extracted", highlight=False)
        raise typer.Exit(1)


@app.command("sbert")
@command(ExtractSbertSettings)
def sbert(settings: ExtractSbertSettings) -> None:
    """SBERT embeddings (1 x dim per song) of the transcriptions stored by 'extract whisper'."""
    from wealy_cli.whisper.sbert import embed_store

    summary = embed_store(settings)
    write_resolved(settings, settings.output_dir(), name="extract_sbert.yaml")
    ui.show(ui.key_value_table(f"SBERT embeddings in {settings.output_dir()}", {
        "items": summary.items, "stored now": summary.stored, "already stored (skipped)": summary.skipped,
        "empty transcriptions": summary.empty_text, "dim": summary.dim,
        "wall seconds": round(summary.wall_seconds, 1)}))


@app.command("clews")
@command(ExtractClewsSettings)
def clews(settings: ExtractClewsSettings) -> None:
    """CLEWS audio embeddings (shingles x dim per song) of a dataset split into a store."""
    from wealy_cli.clews.extract import extract_clews

    report = extract_clews(settings)
    if report is None:  # a worker process other than rank 0: rank 0 reports
        return
    write_resolved(settings, settings.out, name="extract_clews.yaml")
    minutes = report.audio_seconds / 60
    ui.show(ui.key_value_table(f"CLEWS embeddings in {settings.out}", {
        "stored": report.stored, "already stored (skipped)": report.skipped, "failed": report.failed,
        "shingles": report.shingles, "audio minutes": round(minutes, 2),
        "seconds": round(report.wall_seconds, 1),
        "seconds per audio minute": round(report.wall_seconds / minutes, 2) if minutes else "-"}))
    _failures(report.failures)
    if report.stored + report.skipped == 0:
        ui.console.print("error: no version could be extracted", highlight=False)
        raise typer.Exit(1)


def _failures(failures: list[tuple[str, str]]) -> None:
    if failures:
        ui.show(ui.table(f"failures ({len(failures)}, first 20)", ("key", "reason"), failures[:20]))
