"""``wealy extract whisper|sbert|clews``: features from audio or transcriptions into a store."""

from __future__ import annotations

import typer

from ..errors import NotYetAvailable

app = typer.Typer(help="Extract features into an embedding store.", no_args_is_help=True)


@app.command("whisper")
def whisper() -> None:
    """Whisper decoder features and transcriptions (not available yet)."""
    raise NotYetAvailable("'wealy extract whisper' is not available in this release yet (tracked in issue 3)")


@app.command("sbert")
def sbert() -> None:
    """SBERT embeddings of stored transcriptions (not available yet)."""
    raise NotYetAvailable("'wealy extract sbert' is not available in this release yet (tracked in issue 3)")


@app.command("clews")
def clews(
    checkpoint: str = typer.Option(None, "--checkpoint", help="CLEWS checkpoint: official shs-clews / dvi-clews "
                                   ".ckpt, or a .safetensors state dict. \\[required]"),
    out: str = typer.Option(None, "--out", "-o", help="Store directory to create or resume. \\[required]"),
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. \\[default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val or test. \\[default: test]"),
    metadata: str = typer.Option(None, "--metadata", help="Split files (folder or CSV). \\[default: bundled]"),
    audio_dir: str = typer.Option(None, "--audio-dir", help="Folder with the audio files."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Audio read per song. \\[default: 600]"),
    hop: float = typer.Option(None, "--hop", help="Seconds between shingle starts. \\[default: 5]"),
    shingle_seconds: float = typer.Option(None, "--shingle-seconds", help="Shingle length. \\[default: 20]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Shingles per forward pass. \\[default: 16]"),
    gpus: int = typer.Option(None, "--gpus", help="GPUs to use, one process each; 0 = CPU. \\[default: 0]"),
    workers: int = typer.Option(None, "--workers", help="Audio decoding processes. \\[default: 1]"),
    config: str = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """CLEWS audio embeddings (shingles x dim per song) of a dataset split into a store."""
    from pathlib import Path

    from .. import ui
    from ..clews_extraction import ClewsExtractSettings, run_extraction
    from ..settings import load_settings, write_resolved

    settings = load_settings(
        ClewsExtractSettings, Path(config) if config else None, checkpoint=checkpoint, out=out, dataset=dataset,
        split=split, metadata=metadata, audio_dir=audio_dir, max_seconds=max_seconds, hop=hop,
        shingle_seconds=shingle_seconds, batch_size=batch_size, gpus=gpus, workers=workers)
    report = run_extraction(settings)
    write_resolved(settings, settings.out, name="extract_clews.yaml")
    minutes = report.audio_seconds / 60
    ui.show(ui.key_value_table(f"CLEWS embeddings in {settings.out}", {
        "stored": report.stored, "already stored (skipped)": report.skipped, "failed": report.failed,
        "shingles": report.shingles, "audio minutes": round(minutes, 2),
        "seconds": round(report.wall_seconds, 1),
        "seconds per audio minute": round(report.wall_seconds / minutes, 2) if minutes else "-"}))
    if report.failures:
        ui.show(ui.table("failures (first 20)", ("key", "reason"), report.failures[:20]))
