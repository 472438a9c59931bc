"""``wealy distances``: the all-against-all distance matrix of a split, with version references."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from pydantic import Field

from wealy_cli.commands.evaluate import ModelOnSplitSettings
from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import load_settings, write_resolved


class DistancesSettings(ModelOnSplitSettings):
    section = "distances"
    output: Path
    format: Literal["npz", "hdf5", "pickle"] | None = None
    features: Literal["wealy", "clews"] = "wealy"
    redux: str = "bpwr-5"
    block: int = Field(32, ge=1)


def distances(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Run directory (uses best), .safetensors file or "
                                                         "checkpoint name of a trained model."),
    model: str = typer.Option(None, "--model", help="Published model name instead of --checkpoint."),
    store: Path = typer.Option(None, "--store", help="Feature store of the split. [required]"),
    output: Path = typer.Option(None, "--output", "-o", help="Matrix file: .npz, .h5 or .pkl. [required]"),
    format_: str = typer.Option(None, "--format", help="npz or hdf5 (safe), or pickle (the original tools' "
                                                     "layout). [default: from the --output suffix]"),
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. [default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val or test. [default: test]"),
    metadata: Path = typer.Option(None, "--metadata", help="Split files (bundled for shs and lyric-covers)."),
    cache: Path = typer.Option(None, "--cache", help="Folder of chunk-embedding caches. "
                                                    "[default: the output file's folder/cache]"),
    chunk: int = typer.Option(None, "--chunk", help="Rows per chunk. [default: 1500]"),
    overlap: float = typer.Option(None, "--overlap", help="Overlap of consecutive chunks, in [0, 1). [default: 0.9]"),
    topk: int = typer.Option(None, "--topk", help="Mean of the k smallest chunk-pair cosine distances. [default: 1]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Chunks per model call. [default: 32]"),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu. [default: auto]"),
    features: str = typer.Option(None, "--features", help="wealy: embed the store with a trained model "
                                 "(--checkpoint/--model); clews: CLEWS shingle embeddings from 'wealy extract "
                                 "clews', compared pair by pair with --redux. [default: wealy]"),
    redux: str = typer.Option(None, "--redux", help="CLEWS song distance from shingle-pair distances: bpwr-K "
                              "(mean of K best pairs without replacement), min or mean. [default: bpwr-5]"),
    block: int = typer.Option(None, "--block", help="CLEWS: songs per block of the streamed computation. "
                              "[default: 32]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Write the distance matrix of a split (rows = queries, columns = candidates, same versions),
    with query and candidate references (clique, version) and metadata."""
    from wealy_cli.ranking.matrixfile import SUFFIXES
    from wealy_cli.retrieval.evaluate import published_model_flags, write_distances

    flags = dict(
        checkpoint=checkpoint, model=model, store=store, output=output, format=format_, dataset=dataset,
        split=split, metadata=metadata, cache=cache, chunk=chunk, overlap=overlap, topk=topk,
        batch_size=batch_size, accelerator=accelerator, features=features, redux=redux, block=block
    )
    flags = published_model_flags(model, flags)
    settings = load_settings(DistancesSettings, config, **flags)
    path = settings.output
    by_suffix = SUFFIXES.get(path.suffix.lower())
    fmt = settings.format or by_suffix
    if fmt is None:
        raise UserError(f"--output {path}: unknown suffix {path.suffix!r}; use .npz, .h5 or .pkl, or give --format")
    if by_suffix is not None and settings.format is not None and by_suffix != settings.format:
        raise UserError(f"--output {path}: suffix {path.suffix!r} does not match --format {settings.format}")
    if settings.features == "clews":
        written, shape = _clews_distances(settings, path, fmt)
    else:
        written, shape = write_distances(settings.eval_options(path.parent), path, fmt)
    write_resolved(settings, path.parent, name=f"{path.name}.settings.yaml")
    ui.console.print(f"wrote {written} ({fmt}, {shape[0]}×{shape[1]})", highlight=False)


def _clews_distances(settings: DistancesSettings, path: Path, fmt: str) -> tuple[Path, tuple[int, int]]:
    """CLEWS shingle embeddings → song distances by --redux, streamed by blocks; prints metrics."""
    import torch

    from wealy_cli.clews.distances import clews_distance_matrix
    from wealy_cli.core.datasets import load_split
    from wealy_cli.core.store import Store
    from wealy_cli.ranking.matrixfile import write_matrix
    from wealy_cli.ranking.metrics import retrieval_metrics

    if settings.checkpoint is not None or settings.model is not None:
        raise UserError("--features clews compares stored CLEWS embeddings; --checkpoint/--model do not apply")
    if settings.accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("--accelerator gpu: no CUDA device is available (use --accelerator cpu)")
    device = "cuda" if settings.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    store = Store(settings.store)
    split = load_split(settings.dataset, settings.split, settings.metadata, check_audio=False)
    matrix = clews_distance_matrix(store, split, redux=settings.redux, block=settings.block, device=device)
    written = write_matrix(path, matrix, fmt)
    m = retrieval_metrics(matrix.distances, matrix.query_cliques, matrix.candidate_cliques,
                          matrix.query_keys, matrix.candidate_keys)
    rows = [("MAP", m.map, f"± {m.map_ci:.4f}"), ("MR1", m.mr1, f"± {m.mr1_ci:.2f}"),
            ("ARP (%)", m.arp, f"± {m.arp_ci:.3f}")]
    ui.show(ui.table(f"CLEWS {settings.redux}, {settings.dataset}/{settings.split}: {m.n_queries} queries",
                     ("metric", "value", "95 % interval"), rows))
    return written, matrix.distances.shape
