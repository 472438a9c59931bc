"""The ``evaluate`` and ``distances`` workflows: model → chunk embeddings → distances → metrics.

    feature store ──(model, chunks)──► chunk-embedding cache (a store; resumable)
                  ──(tiles)──► exact MAP/MR1/ARP        (evaluate: results.json, per_query.csv)
                  ──(tiles)──► dense distance matrix    (distances: .npz / .h5 / .pkl)

The cache lives in ``<cache>/<hash>``, the hash covering the weights, the feature store's
settings, ``chunk`` and ``overlap``: a rerun reuses it, an interrupted run resumes it, and a
different model or chunking never mixes with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wealy_cli.core import ui
from wealy_cli.core.datasets import DatasetSplit, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically
from wealy_cli.core.launch import Workers, launch, resolve_devices
from wealy_cli.core.store import Store, StoreWriter, settings_hash
from wealy_cli.model.network import ModelConfig
from wealy_cli.ranking.chunks import RowReader, all_rows, embed_chunks, embedding_groups
from wealy_cli.ranking.matrixfile import MatrixFormat
from wealy_cli.ranking.metrics import Metrics
from wealy_cli.ranking.options import EmbedOptions
from wealy_cli.ranking.tiles import (
    ROW_BLOCK_BYTES,
    TILE_ROWS,
    SongSet,
    all_against_all,
    assemble_distances,
    available_memory,
    distance_blocks,
    distance_rows,
    load_songs,
    memory_needed,
    row_blocks,
    summary,
)
from wealy_cli.retrieval.options import DistancesRun, EvaluateRun, ModelOnSplit, ModelSource
from wealy_cli.whisper.lyrics import sung_features

RESULTS = "results.json"
PER_QUERY = "per_query.csv"


@dataclass
class Prepared:
    """What both workflows share once chunk embeddings exist."""

    split: DatasetSplit
    songs: SongSet
    model_path: Path
    cache_dir: Path
    skipped_empty: list[str]


# ---------------------------------------------------------------- model and data


def resolve_model_path(opts: ModelSource) -> Path:
    """``--checkpoint`` as given, or ``--model NAME`` through the models registry."""
    return model_path(opts.checkpoint, opts.model)


def model_path(checkpoint: Path | None, model: str | None) -> Path:
    """The weights of ``--checkpoint PATH`` or of the published ``--model NAME`` (exactly one)."""
    if (checkpoint is None) == (model is None):
        raise UserError("give exactly one of --checkpoint PATH or --model NAME")
    if checkpoint is not None:
        return Path(checkpoint)
    try:
        from wealy_cli.model.hub import resolve_model
    except ImportError as err:  # the registry ships separately in some builds
        raise UserError("--model needs the models registry (wealy_cli.model.hub); use --checkpoint PATH") from err
    return Path(resolve_model(str(model)))


def published_model_flags(model: str | None, flags: dict[str, Any], own_dataset: bool = True) -> dict[str, Any]:
    """With ``--model NAME``, the model decides the dataset (and chunk/topk unless given as flags);
    the user supplies data locations only. A ``--dataset`` that contradicts the model is an error.
    ``own_dataset`` False (a catalogue index: any collection may be indexed) takes chunk/topk only."""
    if not model:
        return flags
    from wealy_cli.model.hub import model_info

    implied = model_info(model).data_settings()
    merged = dict(flags)
    dataset = implied.get("dataset") if own_dataset else None
    if dataset:
        if flags.get("dataset") not in (None, dataset):
            raise UserError(f"--dataset {flags['dataset']} contradicts --model {model}, which was trained "
                            f"and is evaluated on {dataset}; give only data locations with --model")
        merged["dataset"] = dataset
    for key in ("chunk", "topk"):
        if merged.get(key) is None and implied.get(key) is not None:
            merged[key] = implied[key]
    return merged


def weights_digest(model_path: Path) -> str:
    from wealy_cli.model.network import resolve_weights

    weights = resolve_weights(model_path)
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_data(opts: ModelOnSplit) -> tuple[Store, DatasetSplit]:
    features = Store(opts.store)
    split = load_split(opts.dataset, opts.split, opts.metadata, opts.audio_dir)
    kept = split.restrict(features.keys())
    if len(kept) < 2:
        raise UserError(f"--store {opts.store}: holds {len(kept)} versions of {opts.dataset}/{opts.split} "
                        f"in cliques of ≥ 2 (the split has {len(split)}); nothing to evaluate")
    return features, kept


def chunk_cache_dir(cache_root: Path, model_path: Path, features: Store, chunk: int, overlap: float,
                    cfg: ModelConfig | None = None) -> tuple[Path, dict[str, Any]]:
    """The chunk-embedding cache of (weights, feature store settings, chunking, rows read) under
    ``cache_root`` and its settings: ``evaluate``, ``distances`` and ``index build`` share it."""
    settings = {"weights": weights_digest(model_path), "features": features.manifest.get("settings_hash"),
                "chunk": chunk, "overlap": overlap}
    if cfg is not None and (cfg.text_rows or cfg.per_row):  # the paper's models keep their former cache
        settings.update(rows="text" if cfg.text_rows else "all", per_row=cfg.per_row)
    return Path(cache_root) / settings_hash(settings), settings


def late_fraction(cfg: ModelConfig) -> float | None:
    """The late-interaction fraction songs are scored with (None: chunk distances, ``--topk``)."""
    return cfg.late_fraction if cfg.per_row else None


def song_reader(cfg: ModelConfig) -> RowReader:
    """The rows a model reads of each song: those of sung tokens, or all."""
    return sung_features if cfg.text_rows else all_rows


def check_model_fits(features: Store, input_channels: int) -> None:
    if input_channels != features.dim:
        raise UserError(f"--store {features.directory}: features have dim {features.dim}, the model expects "
                        f"{input_channels} (--checkpoint/--model and --store do not belong together)")


def fill_chunk_cache(model: torch.nn.Module, cfg: ModelConfig, features: Store, keys: list[str], cache_dir: Path,
                     cache_settings: dict[str, Any], opts: EmbedOptions, workers: Workers | None = None) -> list[str]:
    """Embed this worker's share of ``keys`` not yet in the cache (the caller holds its run lock);
    returns the keys without feature rows."""
    workers = workers or Workers()
    with StoreWriter(cache_dir, cfg.zdim, writer=f"w{workers.rank}", settings=cache_settings,
                     kind="chunk-embeddings") as writer:
        groups = workers.share(embedding_groups(features, keys, opts))
        return embed_chunks(model, features, groups, writer, opts, check=workers.check, read=song_reader(cfg),
                            per_row=cfg.per_row)


def prepare(opts: ModelOnSplit, cache_root: Path, workers: Workers | None = None) -> Prepared:
    """Embed the split's songs (this worker: every world-th group) into the chunk cache under
    ``cache_root``, then load them all.

    The cache is locked while it is written. Another evaluation of the same model and store
    (another split, or 'distances') waits for it instead of failing, then reuses what it cached.
    With several workers, rank 0 holds the lock and they wait for it together."""
    from wealy_cli.model.network import load_model

    workers = workers or Workers()
    model_path = resolve_model_path(opts)
    features, split = load_data(opts)
    model, cfg = load_model(model_path)
    cache_dir, cache_settings = chunk_cache_dir(cache_root, model_path, features, opts.chunk, opts.overlap, cfg)
    check_model_fits(features, cfg.input_channels)
    model.to(workers.device)
    workers.check_same(split.keys, "the versions to embed (--store, --dataset, --split, --metadata)")
    with workers.lock(cache_dir, "chunk-embedding cache", wait=True):
        empty = fill_chunk_cache(model, cfg, features, split.keys, cache_dir, cache_settings, opts, workers)
        workers.barrier()  # every rank's shards are in before rank 0 unlocks
    cache = Store(cache_dir)
    failed = set(cache.failures())
    if failed:  # songs without feature rows: drop them and re-apply the ≥ 2 versions rule
        split = split.restrict([k for k in split.keys if k not in failed])
    songs = load_songs(cache, split.keys, split.cliques, TILE_ROWS, late_fraction(cfg))
    return Prepared(split, songs, model_path, cache_dir, sorted(failed or empty))


# ---------------------------------------------------------------- evaluate


@dataclass
class EvalResult:
    metrics: Metrics
    split: DatasetSplit
    output: Path
    seconds: float
    info: dict[str, Any]


def evaluate(opts: EvaluateRun) -> EvalResult | None:
    """Run the evaluation on every process of the run; rank 0 writes and returns the result."""
    devices = resolve_devices(opts)
    with launch(devices, opts.nodes, peer_timeout=opts.peer_timeout) as workers:
        return _evaluate(opts, workers)


def _evaluate(opts: EvaluateRun, workers: Workers) -> EvalResult | None:
    start = time.perf_counter()
    output = opts.run_dir()
    prep = prepare(opts, Path(opts.cache or output / "cache"), workers)
    reduce = workers.all_reduce if workers.world > 1 else None
    metrics = all_against_all(prep.songs, opts.topk, workers.rank, workers.world, reduce, device=workers.device,
                              ties=opts.ties, check=workers.check)
    seconds = time.perf_counter() - start
    info = {**summary(prep.songs), "distance": prep.songs.distance_name(opts.topk),
            "model": str(prep.model_path), "cache": str(prep.cache_dir),
            "songs without features": len(prep.skipped_empty), "workers": workers.world}
    if not workers.is_main:
        return None
    result = EvalResult(metrics, prep.split, output, seconds, info)
    write_results(result, opts)
    return result


def write_results(result: EvalResult, opts: EvaluateRun) -> None:
    out = result.output
    out.mkdir(parents=True, exist_ok=True)
    options = opts.model_dump(mode="json")
    payload = {"metrics": result.metrics.to_dict(), "dataset": opts.dataset, "split": opts.split,
               "seconds": round(result.seconds, 3), "info": result.info, "options": options}
    write_atomically(out / RESULTS, json.dumps(payload, indent=2, default=str) + "\n")
    rows = ["key,clique,ap,first_rank,rp"]
    m, versions = result.metrics, result.split.versions
    for q, ap, first, rp in zip(m.query_index, m.ap, m.first_rank, m.rp):
        v = versions[int(q)]
        rows.append(f"{_csv(v.key)},{_csv(v.clique)},{ap:.6f},{first:.10g},{rp:.4f}")  # expected: x.5
    write_atomically(out / PER_QUERY, "\n".join(rows) + "\n")


def _csv(value: str) -> str:
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


# ---------------------------------------------------------------- distances


def write_distances(opts: DistancesRun, fmt: MatrixFormat,
                    memory_limit: int | None = None) -> tuple[tuple[int, int], Metrics | None] | None:
    """All-against-all distance matrix of the split, written by rank 0: (its shape, the CLEWS
    metrics with ``--features clews``) on rank 0, None elsewhere. The tile pairs (CLEWS: block
    pairs; ``.h5``: row blocks) are shared by the processes of the run."""
    devices = resolve_devices(opts)
    with launch(devices, opts.nodes, peer_timeout=opts.peer_timeout) as workers:
        if opts.features == "clews":
            from wealy_cli.clews.distances import write_clews_distances

            return write_clews_distances(opts.store, opts, opts, Path(opts.output), fmt, opts.ties, workers)
        shape = _write_model_distances(opts, fmt, memory_limit, workers)
        return None if shape is None else (shape, None)


def _write_model_distances(opts: DistancesRun, fmt: MatrixFormat, memory_limit: int | None,
                           workers: Workers) -> tuple[int, int] | None:
    """``.h5`` (hdf5) is written row block by row block, never holding the matrix (disk space is
    checked first); npz and pickle are built in memory (refused when the matrix would not fit)."""
    from wealy_cli.ranking.matrixfile import DistanceMatrix, MatrixWriter, check_disk_space, hdf5_bytes, write_matrix

    features, split = load_data(opts)
    path = Path(opts.output)
    if fmt == "hdf5":  # refuse before any embedding work is spent
        check_disk_space(path, hdf5_bytes(len(split), len(split)))
    else:
        need = memory_needed(len(split), len(split))
        limit = memory_limit if memory_limit is not None else int(0.5 * available_memory())
        if need > limit:
            raise UserError(f"{path}: a dense {len(split)}×{len(split)} float32 matrix needs {need / 2**30:.1f} GiB, "
                            f"more than the {limit / 2**30:.1f} GiB allowed (half the available memory); "
                            "write it to an .h5 file instead (by row blocks, never whole)")
    prep = prepare(opts, Path(opts.cache or path.parent / "cache"), workers)
    meta = {"model": str(prep.model_path), "dataset": opts.dataset, "split": opts.split, "topk": opts.topk,
            "chunk": opts.chunk, "overlap": opts.overlap, "distance": prep.songs.distance_name(opts.topk)}
    keys, cliques = prep.split.keys, prep.split.cliques
    if fmt == "hdf5":
        with MatrixWriter(path, keys, keys, cliques, cliques, meta) if workers.is_main else nullcontext() as writer:
            stream_distances(prep.songs, opts.topk, writer, device=workers.device, workers=workers)
        return (len(keys), len(keys)) if workers.is_main else None
    blocks = distance_blocks(prep.songs, opts.topk, workers.rank, workers.world, device=workers.device,
                             check=workers.check)
    if workers.world > 1:  # rank 0 assembles every process's blocks
        parts = workers.gather_object(list(blocks))
        if parts is None:
            return None
        blocks = (b for part in parts for b in part)
    matrix = DistanceMatrix.square(assemble_distances(prep.songs, blocks), keys, cliques, meta)
    write_matrix(path, matrix, fmt)
    return matrix.shape


def stream_distances(songs: SongSet, topk: int, writer: Any, block_bytes: int = ROW_BLOCK_BYTES,
                     device: str | torch.device | None = None, workers: Workers | None = None) -> None:
    """Write every row of the songs' distance matrix to ``writer`` (``write_rows``), tile rows
    by tile rows (computed on ``device``), with a progress bar. With ``workers``, each process
    computes every world-th row block and rank 0 (alone with a ``writer``) writes them, one
    round of blocks at a time: rank 0 holds about ``block_bytes`` of rows, never the matrix."""
    workers = workers or Workers()
    block_bytes = max(1, block_bytes // workers.world)
    rounds = math.ceil(len(row_blocks(songs, block_bytes)) / workers.world)
    mine = distance_rows(songs, topk, block_bytes, device, workers.rank, workers.world)
    with ui.progress() as bar:
        task = bar.add_task("distances", total=songs.n, status=f"{songs.n} songs, {len(songs.tiles)} tiles")
        for _ in range(rounds):
            block = next(mine, None)
            workers.check()
            for part in (workers.gather_object(block) if workers.world > 1 else [block]) or []:
                if part is not None:
                    writer.write_rows(*part)
                    bar.advance(task, len(part[0]))
