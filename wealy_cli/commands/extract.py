"""``wealy extract whisper|sbert|clews``: features from audio or transcriptions into a store."""

from __future__ import annotations

import typer

app = typer.Typer(help="Extract features into an embedding store.", no_args_is_help=True)


@app.command("whisper")
def whisper(
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. [default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val, test or all. [default: all]"),
    metadata: str = typer.Option(None, "--metadata", help="Split files (folder or CSV). [default: bundled]"),
    audio_dir: str = typer.Option(None, "--audio-dir", help="Folder with the audio files."),
    out: str = typer.Option(None, "--out", "-o",
                            help="Store directory to create or resume. [default: runs/stores/DATASET-SPLIT-whisper]"),
    model: str = typer.Option(None, "--model", help="tiny.en (packaged, offline), a faster-whisper or transformers "
                              "directory, or a Hugging Face id (e.g. openai/whisper-large-v3-turbo). [default: tiny.en]"),
    features: str = typer.Option(None, "--features", help="decoder (rows per fed token) or encoder (1500 rows "
                                 "per 30 s window). [default: decoder]"),
    language: str = typer.Option(None, "--language", help="auto (detected once per song), en, or a language code. "
                                 "[default: auto]"),
    prompt: str = typer.Option(None, "--prompt", help="Initial prompt. [default: lyrics:]"),
    compute_type: str = typer.Option(None, "--compute-type", help="CTranslate2 compute type for decoding: auto, "
                                     "int8, float32, float16, int8_float16 ...; auto = float32 on CPU (its encoder "
                                     "output is reused), float16 on GPU. [default: auto]"),
    precision: str = typer.Option(None, "--precision", help="PyTorch feature pass: auto (float32 on CPU, float16 on "
                                  "GPU), float32, bfloat16, float16. [default: auto]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Songs decoded in lockstep (and windows per feature batch). [default: 8]"),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Audio read per song. [default: 300]"),
    gpus: int = typer.Option(None, "--gpus", help="GPUs per node, one process each; 0 = CPU. [default: 0]"),
    workers: int = typer.Option(None, "--workers", help="CPU processes when --gpus is 0. [default: 1]"),
    nodes: int = typer.Option(None, "--nodes", help="Machines (SLURM or torchrun launch). [default: 1]"),
    limit: int = typer.Option(None, "--limit", help="Only the first N versions. [default: all]"),
    config: str = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Whisper decoder features, transcriptions and languages of a dataset into a store."""
    from pathlib import Path

    from wealy_cli.core import ui
    from wealy_cli.core.settings import load_settings, write_resolved
    from wealy_cli.whisper.extract import ExtractWhisperSettings, extract_whisper

    settings = load_settings(
        ExtractWhisperSettings, Path(config) if config else None, dataset=dataset, split=split, metadata=metadata,
        audio_dir=audio_dir, out=out, model=model, features=features, language=language, prompt=prompt,
        compute_type=compute_type, precision=precision, batch_size=batch_size, max_seconds=max_seconds,
        gpus=gpus, workers=workers, nodes=nodes, limit=limit)
    summary = extract_whisper(settings)
    if summary is None:  # a worker process other than rank 0: rank 0 reports
        return
    write_resolved(settings, settings.output_dir(), name="extract_whisper.yaml")
    ui.show(ui.key_value_table(f"Whisper {settings.features} features in {settings.output_dir()}", summary.as_table()))
    if summary.failures:
        ui.show(ui.table(f"failures ({len(summary.failures)}, first 20)", ("key", "reason"), summary.failures[:20]))
    if summary.stored + summary.skipped == 0:
        ui.console.print("error: no version could be extracted", highlight=False)
        raise typer.Exit(1)


@app.command("sbert")
def sbert(
    store: str = typer.Argument(None, help="Whisper store whose transcriptions are embedded. [required]"),
    out: str = typer.Option(None, "--out", "-o", help="Store directory to create or resume. [default: STORE-sbert]"),
    model: str = typer.Option(None, "--model", help="all-MiniLM-L6-v2 (packaged, offline), a sentence-transformers "
                              "directory or a Hugging Face id. [default: all-MiniLM-L6-v2]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Texts per batch. [default: 64]"),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ... [default: auto]"),
    config: str = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """SBERT embeddings (1 x dim per song) of the transcriptions stored by 'extract whisper'."""
    from pathlib import Path

    from wealy_cli.core import ui
    from wealy_cli.core.settings import load_settings, write_resolved
    from wealy_cli.whisper.sbert import ExtractSbertSettings, embed_store

    settings = load_settings(ExtractSbertSettings, Path(config) if config else None, store=store, out=out,
                             model=model, batch_size=batch_size, device=device)
    summary = embed_store(settings)
    write_resolved(settings, settings.output_dir(), name="extract_sbert.yaml")
    ui.show(ui.key_value_table(f"SBERT embeddings in {settings.output_dir()}", {
        "items": summary.items, "stored now": summary.stored, "already stored (skipped)": summary.skipped,
        "empty transcriptions": summary.empty_text, "dim": summary.dim,
        "wall seconds": round(summary.wall_seconds, 1)}))


@app.command("clews")
def clews(
    checkpoint: str = typer.Option(None, "--checkpoint", help="CLEWS checkpoint: official shs-clews / dvi-clews "
                                   ".ckpt, or a .safetensors state dict. [required]"),
    out: str = typer.Option(None, "--out", "-o", help="Store directory to create or resume. [required]"),
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. [default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val or test. [default: test]"),
    metadata: str = typer.Option(None, "--metadata", help="Split files (folder or CSV). [default: bundled]"),
    audio_dir: str = typer.Option(None, "--audio-dir", help="Folder with the audio files."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Audio read per song. [default: 600]"),
    hop: float = typer.Option(None, "--hop", help="Seconds between shingle starts. [default: 5]"),
    shingle_seconds: float = typer.Option(None, "--shingle-seconds", help="Shingle length. [default: 20]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Shingles per forward pass. [default: 16]"),
    gpus: int = typer.Option(None, "--gpus", help="GPUs to use, one process each; 0 = CPU. [default: 0]"),
    workers: int = typer.Option(None, "--workers", help="Audio decoding processes. [default: 1]"),
    config: str = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """CLEWS audio embeddings (shingles x dim per song) of a dataset split into a store."""
    from pathlib import Path

    from wealy_cli.clews.extract import ClewsExtractSettings, extract_clews
    from wealy_cli.core import ui
    from wealy_cli.core.settings import load_settings, write_resolved

    settings = load_settings(
        ClewsExtractSettings, Path(config) if config else None, checkpoint=checkpoint, out=out, dataset=dataset,
        split=split, metadata=metadata, audio_dir=audio_dir, max_seconds=max_seconds, hop=hop,
        shingle_seconds=shingle_seconds, batch_size=batch_size, gpus=gpus, workers=workers)
    report = extract_clews(settings)
    write_resolved(settings, settings.out, name="extract_clews.yaml")
    minutes = report.audio_seconds / 60
    ui.show(ui.key_value_table(f"CLEWS embeddings in {settings.out}", {
        "stored": report.stored, "already stored (skipped)": report.skipped, "failed": report.failed,
        "shingles": report.shingles, "audio minutes": round(minutes, 2),
        "seconds": round(report.wall_seconds, 1),
        "seconds per audio minute": round(report.wall_seconds / minutes, 2) if minutes else "-"}))
    if report.failures:
        ui.show(ui.table(f"failures ({len(report.failures)}, first 20)", ("key", "reason"), report.failures[:20]))
    if report.stored + report.skipped == 0:
        ui.console.print("error: no version could be extracted", highlight=False)
        raise typer.Exit(1)
