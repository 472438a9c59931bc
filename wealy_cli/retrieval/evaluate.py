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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wealy_cli.core import ui
from wealy_cli.core.datasets import DatasetSplit, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically
from wealy_cli.core.launch import Devices, resolve_devices
from wealy_cli.core.lock import run_lock
from wealy_cli.core.store import Store, StoreWriter, settings_hash
from wealy_cli.ranking.chunks import embed_chunks, embedding_groups
from wealy_cli.ranking.matrixfile import MatrixFormat
from wealy_cli.ranking.metrics import Metrics
from wealy_cli.ranking.options import EmbedOptions
from wealy_cli.ranking.tiles import (
    TILE_ROWS,
    SongSet,
    all_against_all,
    available_memory,
    dense_distances,
    load_songs,
    memory_needed,
    summary,
)
from wealy_cli.retrieval.options import DistancesRun, EvaluateRun, ModelOnSplit, ModelSource

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


def chunk_cache_dir(cache_root: Path, model_path: Path, features: Store, chunk: int,
                    overlap: float) -> tuple[Path, dict[str, Any]]:
    """The chunk-embedding cache of (weights, feature store settings, chunking) under ``cache_root``
    and its settings: ``evaluate``, ``distances`` and ``index build`` share it."""
    settings = {"weights": weights_digest(model_path), "features": features.manifest.get("settings_hash"),
                "chunk": chunk, "overlap": overlap}
    return Path(cache_root) / settings_hash(settings), settings


def check_model_fits(features: Store, input_channels: int) -> None:
    if input_channels != features.dim:
        raise UserError(f"--store {features.directory}: features have dim {features.dim}, the model expects "
                        f"{input_channels} (--checkpoint/--model and --store do not belong together)")


def fill_chunk_cache(model: torch.nn.Module, zdim: int, features: Store, keys: list[str], cache_dir: Path,
                     cache_settings: dict[str, Any], opts: EmbedOptions, rank: int = 0, world: int = 1) -> list[str]:
    """Embed this worker's share (every world-th group) of ``keys`` not yet in the cache (the caller
    holds its run lock); returns the keys without feature rows."""
    with StoreWriter(cache_dir, zdim, writer=f"w{rank}", settings=cache_settings,
                     kind="chunk-embeddings") as writer:
        groups = embedding_groups(features, keys, opts)[rank::world]
        return embed_chunks(model, features, groups, writer, opts)


def prepare(opts: ModelOnSplit, cache_root: Path, rank: int = 0, world: int = 1,
            barrier: Callable[[], None] | None = None, device: str = "cpu",
            agree: Callable[[bool], bool] | None = None) -> Prepared:
    """Embed the split's songs (this worker: every world-th group) into the chunk cache under
    ``cache_root``, then load them all.

    The cache is locked while it is written. Another evaluation of the same model and store
    (another split, or 'distances') waits for it instead of failing, then reuses what it cached.
    With several workers, ``agree`` (a broadcast of rank 0's value) lets them wait together."""
    from wealy_cli.model.network import load_model

    model_path = resolve_model_path(opts)
    features, split = load_data(opts)
    cache_dir, cache_settings = chunk_cache_dir(cache_root, model_path, features, opts.chunk, opts.overlap)
    model, cfg = load_model(model_path)
    check_model_fits(features, cfg.input_channels)
    model.to(device)
    with run_lock(cache_dir, "chunk-embedding cache", wait=True, owner=rank == 0, agree=agree if world > 1 else None):
        empty = fill_chunk_cache(model, cfg.zdim, features, split.keys, cache_dir, cache_settings, opts, rank, world)
        if barrier is not None:  # every rank's shards are in before rank 0 unlocks
            barrier()
    cache = Store(cache_dir)
    failed = set(cache.failures())
    if failed:  # songs without feature rows: drop them and re-apply the ≥ 2 versions rule
        split = split.restrict([k for k in split.keys if k not in failed])
    songs = load_songs(cache, split.keys, split.cliques, TILE_ROWS)
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
    """Run the evaluation (on one or several processes); rank 0 writes and returns the result."""
    devices = resolve_devices(opts)
    if devices.processes > 1:
        return _evaluate_fabric(opts, devices)
    device = "cuda" if devices.on_gpu else "cpu"
    return _evaluate(opts, rank=0, world=1, barrier=None, reduce=None, device=device)


def _evaluate_fabric(opts: EvaluateRun, devices: Devices) -> EvalResult | None:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=devices.accelerator, devices=devices.processes, strategy="ddp",
                    precision="32-true")
    fabric.launch()
    if fabric.global_rank != 0:
        ui.set_quiet(True)
    result = _evaluate(opts, fabric.global_rank, fabric.world_size, fabric.barrier,
                       lambda x: fabric.all_reduce(x.to(fabric.device), reduce_op="sum").cpu(),
                       device=str(fabric.device), agree=lambda ok: bool(fabric.broadcast(ok, src=0)))
    return result if fabric.global_rank == 0 else None


def _evaluate(opts: EvaluateRun, rank: int, world: int, barrier: Callable[[], None] | None,
              reduce: Callable[[torch.Tensor], torch.Tensor] | None, device: str,
              agree: Callable[[bool], bool] | None = None) -> EvalResult | None:
    start = time.perf_counter()
    output = opts.run_dir()
    prep = prepare(opts, Path(opts.cache or output / "cache"), rank, world, barrier, device, agree)
    metrics = all_against_all(prep.songs, opts.topk, rank, world, reduce)
    seconds = time.perf_counter() - start
    info = {**summary(prep.songs), "model": str(prep.model_path), "cache": str(prep.cache_dir),
            "songs without features": len(prep.skipped_empty), "workers": world}
    if rank != 0:
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
        rows.append(f"{_csv(v.key)},{_csv(v.clique)},{ap:.6f},{int(first)},{rp:.4f}")
    write_atomically(out / PER_QUERY, "\n".join(rows) + "\n")


def _csv(value: str) -> str:
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


# ---------------------------------------------------------------- distances


def write_distances(opts: DistancesRun, fmt: MatrixFormat, memory_limit: int | None = None) -> tuple[int, int]:
    """All-against-all distance matrix of the split, written with ``matrixfile.write_matrix``."""
    from wealy_cli.ranking.matrixfile import DistanceMatrix, write_matrix

    features, split = load_data(opts)
    need = memory_needed(len(split), len(split))
    limit = memory_limit if memory_limit is not None else int(0.5 * available_memory())
    if need > limit:  # refuse before any embedding work is spent
        raise UserError(f"a dense {len(split)}×{len(split)} float32 matrix needs {need / 2**30:.1f} GiB, more than "
                        f"the {limit / 2**30:.1f} GiB allowed (half the available memory); "
                        f"use 'wealy evaluate' for metrics, which never builds the matrix")
    path = Path(opts.output)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prep = prepare(opts, Path(opts.cache or path.parent / "cache"), device=device)
    dist = dense_distances(prep.songs, opts.topk)
    meta = {"model": str(prep.model_path), "dataset": opts.dataset, "split": opts.split, "topk": opts.topk,
            "chunk": opts.chunk, "overlap": opts.overlap, "distance": "mean of topk smallest chunk cosine distances"}
    matrix = DistanceMatrix.square(dist, prep.split.keys, prep.split.cliques, meta)
    write_matrix(path, matrix, fmt)
    return matrix.shape
