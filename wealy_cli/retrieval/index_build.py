"""``index build`` and ``index add``: the songs of a feature store → chunk embeddings → an index.

    feature store ──(model, chunks)──► chunk-embedding cache (shared with evaluate; resumable)
                  ──► index data files + FAISS index (``index.append_songs``; crash-safe)
                  ──► CLEWS embeddings and fusion statistics (with ``clews_store``)

Songs: with a dataset, its split's songs in the store, by the rules ``evaluate`` applies (so
the index holds exactly the songs of ``wealy distances``; unlabelled catalogue rows are exempt);
without one, every song of the store (clique and version as stored).

A build that stops (even SIGKILL) resumes when run again: embedded songs are in the cache,
committed songs in the index; only the rest is done. A build or add holds the index directory's
run lock (``core.lock``): a second writer is refused, naming the first; searches only read the
committed files and need no lock. ``add`` embeds the new songs only, with the
index's checkpoint and chunking, and adds them to the same FAISS index (no retraining).
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wealy_cli.core.datasets import SPLITS, DatasetSplit, MissingSplitError, load_split, split_key
from wealy_cli.core.errors import UserError
from wealy_cli.core.launch import Workers, launch, resolve_devices
from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.retrieval.index import (
    CACHE_DIR,
    CLEWS_DIR,
    MANIFEST,
    Index,
    IndexFileError,
    SongEntry,
    append_songs,
    check_writable,
    kind_options,
    new_manifest,
    read_manifest,
    write_manifest,
)
from wealy_cli.retrieval.options import CatalogueSongs, IndexAddRun, IndexBuildRun, IndexKindOptions
from wealy_cli.retrieval.search import FUSION_FILE

STORE_SELECTION = "store"  # no dataset: every song of the store


@dataclass
class Indexing:
    """What one build or add run needs besides the song selection."""

    output: Path
    weights: Path
    model_name: str | None
    chunk: int
    overlap: float
    topk: int
    params: IndexKindOptions
    threads: int


@dataclass
class BuildReport:
    index: Path
    selected: int = 0  # songs of the dataset/store selection
    added: int = 0
    already_indexed: int = 0
    without_features: list[str] = field(default_factory=list)
    songs: int = 0
    chunks: int = 0
    kind: str = ""
    seconds: float = 0.0

    def as_table(self) -> dict[str, Any]:
        return {"index": str(self.index), "kind": self.kind, "songs selected": self.selected,
                "added now": self.added, "already indexed (skipped)": self.already_indexed,
                "without feature rows (skipped)": len(self.without_features), "songs in the index": self.songs,
                "chunks in the index": self.chunks, "seconds": round(self.seconds, 1)}


def build_index(opts: IndexBuildRun) -> BuildReport | None:
    """Create the index (or resume an interrupted build of the same settings). The songs are
    embedded by every process of the run (``--gpus``/``--workers``/``--nodes``); rank 0 writes
    the index and returns the report (None elsewhere)."""
    from wealy_cli.retrieval.evaluate import model_path

    check_writable(opts.output)
    features = Store(opts.store)
    params = IndexKindOptions.model_validate(opts.model_dump(include=set(IndexKindOptions.model_fields)))
    run = Indexing(Path(opts.output), model_path(opts.checkpoint, opts.model), opts.model, opts.chunk, opts.overlap,
                   opts.topk, params, opts.threads)
    # One writer at a time (rank 0 holds the lock for the run); searches only read committed files.
    with launch(resolve_devices(opts), opts.nodes, peer_timeout=opts.peer_timeout, lock=(run.output, "index")) \
            as workers:
        existing = read_manifest(run.output) if (run.output / MANIFEST).is_file() else None
        if existing is not None:
            _check_resumable(existing, run, features)
        return _index_songs(opts, run, features, existing, workers)


def add_to_index(opts: IndexAddRun) -> BuildReport | None:
    """Add the store's songs that the index does not hold yet, with the index's checkpoint (by
    default), chunking, topk and FAISS index (no retraining)."""
    from wealy_cli.retrieval.evaluate import model_path
    from wealy_cli.retrieval.search import checkpoint_for

    read_manifest(opts.index)  # a damaged index is refused before anything is touched
    with launch(resolve_devices(opts), opts.nodes, peer_timeout=opts.peer_timeout, lock=(opts.index, "index")) \
            as workers:
        manifest = read_manifest(opts.index)
        index = Index(opts.index)  # checks the files (FAISS index included) before anything is appended
        _ = index.faiss
        index.close()
        checkpoint = model_path(None, opts.model) if opts.model is not None else opts.checkpoint
        weights = checkpoint_for(index, checkpoint)
        run = Indexing(Path(opts.index), weights, manifest["model"].get("name"), manifest["chunk"],
                       manifest["overlap"], manifest["topk"], kind_options(manifest["params"]), opts.threads)
        features = Store(opts.store)
        _check_features(manifest, features)
        if manifest.get("clews") and opts.clews_store is None:
            raise UserError(f"{opts.index}: the index holds CLEWS embeddings; give --clews-store for the new songs")
        if opts.clews_store is not None and not manifest.get("clews"):
            raise UserError(f"--clews-store: the index {opts.index} was built without CLEWS embeddings; "
                            "build a new index with --clews-store to fuse")
        return _index_songs(opts, run, features, manifest, workers)


# ---------------------------------------------------------------- the shared run


def _index_songs(opts: CatalogueSongs, run: Indexing, features: Store, manifest: dict[str, Any] | None,
                 workers: Workers) -> BuildReport | None:
    from wealy_cli.model.network import load_model
    from wealy_cli.ranking.options import EmbedOptions
    from wealy_cli.retrieval.evaluate import check_model_fits, chunk_cache_dir, fill_chunk_cache, weights_digest

    start = time.perf_counter()
    report = BuildReport(run.output, kind=run.params.kind)
    parts = _selection(opts, features)
    indexed = {r["key"] for r in Index(run.output).records()} if manifest and manifest["songs"] else set()
    todo = [k for p in parts for k in p.keys if k not in indexed]
    report.selected = sum(len(p) for p in parts)
    clews = _clews_source(opts, manifest, todo)
    cache_root = Path(opts.cache) if opts.cache is not None else run.output / CACHE_DIR
    model, cfg = load_model(run.weights)
    cache_dir, cache_settings = chunk_cache_dir(cache_root, run.weights, features, run.chunk, run.overlap, cfg)
    check_model_fits(features, cfg.input_channels)
    model.to(workers.device)
    embed = EmbedOptions(chunk=run.chunk, overlap=run.overlap, topk=run.topk, batch_size=opts.batch_size)
    workers.check_same(todo, "the songs to index (--store, --dataset, --split, --metadata)")
    with workers.lock(cache_dir, "chunk-embedding cache", wait=True):  # shared with evaluate and distances
        fill_chunk_cache(model, cfg, features, todo, cache_dir, cache_settings, embed, workers)
        workers.barrier()  # every rank's shards are in before rank 0 unlocks
    if not workers.is_main:  # rank 0 writes the index
        return None
    cache = Store(cache_dir)
    failed = set(cache.failures())
    report.without_features = sorted(failed & set(todo))
    parts = [_without(p, failed) for p in parts]
    new = [(p, i) for p in parts for i, k in enumerate(p.keys) if k not in indexed]
    if manifest is None:
        if not new:
            raise UserError(f"--store {opts.store}: none of the selected songs has feature rows; nothing to index")
        manifest = new_manifest(cfg.zdim, run.params, _index_info(opts, run, weights_digest(run.weights), features,
                                                                  cfg))
    if clews is not None:
        _copy_clews(clews, run.output, [p.keys[i] for p, i in new])
        manifest = {**manifest, "clews": {"dir": CLEWS_DIR, "settings": clews.settings,
                                          "settings_hash": clews.manifest.get("settings_hash"),
                                          "dim": clews.dim, "redux": opts.clews_redux}}
    run.output.mkdir(parents=True, exist_ok=True)
    manifest, appended = append_songs(run.output, _entries(new, cache), len(new), manifest, run.threads)
    report.added = appended.added
    report.already_indexed = len(indexed & {k for p in parts for k in p.keys})
    report.songs, report.chunks = manifest["songs"], manifest["chunks"]
    if manifest.get("clews") and manifest.get("fusion", {}).get("songs") != manifest["songs"]:
        manifest = _fusion_statistics(run.output, manifest, opts.fusion_sample)
    if opts.cache is None:
        shutil.rmtree(cache_root, ignore_errors=True)  # its embeddings are in the index now
    report.seconds = time.perf_counter() - start
    return report


def _selection(opts: CatalogueSongs, features: Store) -> list[DatasetSplit]:
    """The songs to index, as dataset splits restricted to the store (see the module doc)."""
    stored = features.keys()
    if opts.dataset is None:
        versions = [_stored_version(features, k) for k in stored]
        return [DatasetSplit(STORE_SELECTION, "all", versions)]
    parts = []
    for split in SPLITS if opts.split == "all" else (opts.split,):
        try:
            part = load_split(opts.dataset, split, opts.metadata, opts.audio_dir, check_audio=False,
                              labelled_only=False)
        except MissingSplitError:
            if opts.split != "all":
                raise
            continue  # this collection has no such split
        parts.append(part.restrict(stored))
    if not any(len(p) for p in parts):
        raise UserError(f"--store {opts.store}: holds none of the songs of {opts.dataset}/{opts.split} "
                        f"({len(stored)} stored songs); were they extracted from another collection?")
    return parts


def _without(part: DatasetSplit, failed: set[str]) -> DatasetSplit:
    """``part`` less the songs without feature rows: a dataset split re-applies its rules (as
    ``evaluate`` does), the store's own songs are all kept."""
    if part.name == STORE_SELECTION:
        return DatasetSplit(part.name, part.split, [v for v in part.versions if v.key not in failed])
    return part.restrict([k for k in part.keys if k not in failed])


def _stored_version(features: Store, key: str) -> Any:
    from wealy_cli.core.datasets import Version

    attrs = features.attrs(key)
    clique, version = split_key(key)
    meta = attrs.get("metadata") or {}
    return Version(str(attrs.get("clique", clique)), str(attrs.get("version", version)), None, "all", meta=meta)


def _entries(new: list[tuple[DatasetSplit, int]], cache: Store) -> Iterator[SongEntry]:
    for part, i in new:
        v = part.versions[i]
        meta = {**({"path": str(v.path)} if v.path is not None else {}), **dict(v.meta)}
        yield SongEntry(v.key, v.clique, v.version, cache[v.key], meta)


def _index_info(opts: CatalogueSongs, run: Indexing, digest: str, features: Store, cfg: Any) -> dict[str, Any]:
    """What the manifest records once: the model, chunking and the extraction settings."""
    from wealy_cli.model.network import resolve_weights
    from wealy_cli.retrieval.evaluate import late_fraction

    return {"model": {"path": str(resolve_weights(run.weights).resolve()), "name": run.model_name,
                      "weights_digest": digest, "input_channels": cfg.input_channels, "zdim": cfg.zdim,
                      "rows": "text" if cfg.text_rows else "all", "late_fraction": late_fraction(cfg)},
            "chunk": run.chunk, "overlap": run.overlap, "topk": run.topk,
            "features": {"store": str(Path(opts.store).resolve()), "kind": features.manifest.get("kind"),
                         "dim": features.dim, "settings": features.settings,
                         "settings_hash": features.manifest.get("settings_hash")},
            "dataset": {"name": opts.dataset, "split": opts.split,
                        "metadata": str(opts.metadata) if opts.metadata else None}}


def _check_resumable(manifest: dict[str, Any], run: Indexing, features: Store) -> None:
    """A build into an existing index must have its settings (then it resumes or adds nothing)."""
    from wealy_cli.retrieval.evaluate import weights_digest

    digest = weights_digest(run.weights)
    theirs = manifest.get("model", {}).get("weights_digest")
    if digest != theirs:
        raise IndexFileError(f"{run.output}: already holds an index built with other weights (digest {theirs}, "
                             f"the checkpoint's is {digest}); choose a new directory")
    _check_features(manifest, features)
    mine = {"chunk": run.chunk, "overlap": run.overlap, "topk": run.topk, "kind": run.params.kind}
    for name, value in mine.items():
        if manifest.get(name) != value:
            raise IndexFileError(f"{run.output}: already holds an index with {name} {manifest.get(name)} "
                                 f"(now {value}); choose a new directory, or 'wealy index add' to add songs")


def _check_features(manifest: dict[str, Any], features: Store) -> None:
    theirs = manifest.get("features", {}).get("settings_hash")
    if features.manifest.get("settings_hash") != theirs:
        raise IndexFileError(f"--store {features.directory}: extracted with other settings than the index's songs "
                             f"(settings hash {features.manifest.get('settings_hash')}, the index's {theirs})")


# ---------------------------------------------------------------- CLEWS and fusion statistics


def _clews_source(opts: CatalogueSongs, manifest: dict[str, Any] | None, todo: list[str]) -> Store | None:
    """The CLEWS store, checked before anything is written: kind, settings, every new song in it."""
    if opts.clews_store is None:
        return None
    clews = Store(opts.clews_store)
    if clews.manifest.get("kind") != "clews":
        raise UserError(f"--clews-store {opts.clews_store}: not a CLEWS store (kind {clews.manifest.get('kind')!r}); "
                        "make one with 'wealy extract clews'")
    held = (manifest or {}).get("clews")
    if held and held.get("settings_hash") != clews.manifest.get("settings_hash"):
        raise UserError(f"--clews-store {opts.clews_store}: made with other CLEWS settings than the index's")
    missing = [k for k in todo if k not in clews]
    if missing:
        raise UserError(f"--clews-store {opts.clews_store}: {len(missing)} of the songs to index have no CLEWS "
                        f"embeddings (e.g. {missing[0]!r}); extract them with 'wealy extract clews'")
    return clews


def _copy_clews(clews: Store, output: Path, keys: list[str]) -> None:
    """The new songs' CLEWS embeddings into the index's own CLEWS store (resumable)."""
    with StoreWriter(output / CLEWS_DIR, clews.dim, settings=clews.settings, kind="clews") as writer:
        for key in keys:
            if key not in writer:
                attrs = clews.attrs(key)
                writer.add(key, clews[key], clique=attrs.get("clique"), version=attrs.get("version"))


def _fusion_statistics(directory: Path, manifest: dict[str, Any], sample: int) -> dict[str, Any]:
    """All-against-all lyrics and CLEWS distances of (a random sample of) the index's songs, kept
    for normalising fused search distances as ``wealy fuse`` does."""
    from wealy_cli.clews.distances import clews_song_distances
    from wealy_cli.core.files import write_atomically
    from wealy_cli.ranking.tiles import SongSet, dense_distances

    index = Index(directory)
    n = index.n_songs
    songs = np.arange(n) if n <= sample else np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
    keys = [index.record(int(s))["key"] for s in songs]
    chunks = SongSet([index.chunks(int(s)) for s in songs], keys,
                     late_fraction=manifest["model"].get("late_fraction"))
    lyrics = dense_distances(chunks, int(manifest["topk"]), label="fusion statistics (lyrics)")
    audio = clews_song_distances(Store(directory / CLEWS_DIR), keys, keys, redux=manifest["clews"]["redux"])
    index.close()
    buffer = io.BytesIO()
    np.savez(buffer, **{f"lyrics_top{manifest['topk']}": lyrics, "audio": audio})
    write_atomically(directory / FUSION_FILE, buffer.getvalue())
    manifest = {**manifest, "fusion": {"songs": n, "sample": len(songs), "file": FUSION_FILE}}
    write_manifest(directory, manifest)
    return manifest
