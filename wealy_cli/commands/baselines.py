"""``wealy baselines``: transcription baselines and oracle bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from wealy_cli.core import ui
from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingDir, load_settings, write_resolved
from wealy_cli.core.store import Store
from wealy_cli.retrieval.baselines import BASELINES, BaselineOptions, corpus_from_store, parse_compute, run_baselines


class BaselinesSettings(DataSettings):
    section = "baselines"
    store: ExistingDir
    output: CreatableDir
    compute: str = ",".join(BASELINES)
    seed: int = 42
    save_distances: bool = False
    distance_format: Literal["npz", "hdf5", "pickle"] = "npz"
    sbert_model: str | None = None
    sbert_batch_size: int = 64
    lucene_terms: int = 12


def baselines(
    store: Path = typer.Option(None, "--store", help="Whisper feature store whose items carry the "
                               "transcription (attribute 'text'). [required]"),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder. [required]"),
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. [default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val or test. [default: test]"),
    metadata: Path = typer.Option(None, "--metadata", help="Split files (bundled for shs and "
                                  "lyric-covers). [default: bundled]"),
    compute: str = typer.Option(None, "--compute", help="Comma-separated baselines: "
                                f"{', '.join(BASELINES)}. [default: all]"),
    seed: int = typer.Option(None, "--seed", help="Seed of the random baselines. [default: 42]"),
    save_distances: bool = typer.Option(None, "--save-distances/--no-save-distances",
                                        help="Also write each baseline's matrix (for `wealy fuse`). "
                                        "[default: no-save-distances]"),
    distance_format: str = typer.Option(None, "--distance-format", help="npz, hdf5 or pickle. [default: npz]"),
    sbert_model: str = typer.Option(None, "--sbert-model", help="sentence-transformers model folder or "
                                    "hub name. [default: packaged all-MiniLM-L6-v2]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Transcription baselines (SBERT, TF-IDF, BM25) and oracle bounds on a dataset split.

    Writes baseline_results.json, comparison_table.txt and settings.yaml to --output."""
    settings = load_settings(BaselinesSettings, config, store=store, output=output, dataset=dataset,
                             split=split, metadata=metadata, compute=compute, seed=seed,
                             save_distances=save_distances, distance_format=distance_format,
                             sbert_model=sbert_model)
    names = parse_compute(settings.compute)
    feature_store = Store(settings.store)
    full = load_split(settings.dataset, settings.split, settings.metadata, check_audio=False)
    split_versions = full.restrict(feature_store.keys())
    if len(split_versions) == 0:
        raise UserError(f"--store {settings.store}: none of the {len(full)} versions of "
                        f"{settings.dataset}/{settings.split} is in the store (with ≥ 2 per clique)")
    if len(split_versions) < len(full):
        ui.console.print(f"{len(full) - len(split_versions)} of {len(full)} versions are not in the store "
                         "(or lost their clique partner): left out")
    corpus = corpus_from_store(feature_store, split_versions.keys, split_versions.cliques)
    opts = BaselineOptions(seed=settings.seed, sbert_model=settings.sbert_model,
                           sbert_batch_size=settings.sbert_batch_size, lucene_terms=settings.lucene_terms)
    info = {"dataset": settings.dataset, "split": settings.split, "store": str(settings.store)}
    results = run_baselines(corpus, names, settings.output, opts,
                            settings.distance_format if settings.save_distances else None, info)
    write_resolved(settings, settings.output)
    rows = [(name, f"{m['map']:.4f} ± {m['map_ci']:.4f}", f"{m['mr1']:.2f}", f"{m['arp']:.3f}", m["n_queries"])
            for name, m in results.items()]
    ui.show(ui.table(f"baselines on {settings.dataset}/{settings.split} ({len(corpus)} versions)",
                     ("baseline", "MAP", "MR1", "ARP (%)", "queries"), rows))
