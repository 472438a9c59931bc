"""Song distances from CLEWS shingle embeddings, streamed by blocks of songs.

Every song is a matrix of shingle embeddings (shingles x dim). For a song pair, the distance of
shingles i, j is the normalised squared Euclidean distance ``||q_i - c_j||^2 / dim``; the
shingles x shingles matrix is reduced to one number:

- ``min``: the smallest shingle-pair distance;
- ``mean``: the mean over all shingle pairs;
- ``bpwr-K`` (best pairs without replacement): repeatedly take the smallest remaining pair and
  remove its row and its column, K times at most (or until a song runs out of shingles), and
  average the pairs taken. Ties go to the pair that comes first in row-major order (query
  shingle, then candidate shingle); the official code instead adds 1e-7 noise to break them.

Only one block of query songs x one block of candidate songs is in memory at a time (padded to
their longest song, padding masked), so the cost in memory does not grow with the data set.
Several processes (``Workers``) share the block pairs; rank 0 gathers and assembles the matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from wealy_cli.clews.options import ClewsDistanceOptions, parse_redux
from wealy_cli.core import ui
from wealy_cli.core.datasets import DatasetSplit, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.launch import Workers
from wealy_cli.core.layers import pad_sequences
from wealy_cli.core.settings import DataSettings
from wealy_cli.core.store import Store
from wealy_cli.ranking.matrixfile import DistanceMatrix, MatrixFormat, write_matrix
from wealy_cli.ranking.metrics import Metrics, retrieval_metrics

REDUCTIONS = ("bpwr-5", "bpwr-10", "min", "mean")
_INF = float("inf")


def shingle_distances(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Normalised squared Euclidean distances between all rows: (n, d) x (m, d) → (n, m)."""
    dist = q.pow(2).sum(-1, keepdim=True) + c.pow(2).sum(-1)[None, :] - 2 * q @ c.T
    return dist.clamp(min=0) / q.shape[-1]


def block_distances(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(bq, sq, d) x (bc, sc, d) → (bq, bc, sq, sc), as one large matrix product."""
    (bq, sq, d), (bc, sc, _) = q.shape, c.shape
    dist = shingle_distances(q.reshape(bq * sq, d), c.reshape(bc * sc, d))
    return dist.reshape(bq, sq, bc, sc).permute(0, 2, 1, 3)


def reduce_pairs(dist: torch.Tensor, redux: str, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce (..., s1, s2) shingle-pair distances to (...) song distances.

    ``valid`` (..., s1, s2) marks real shingle pairs (False = padding); None means all real."""
    kind, k = parse_redux(redux)
    if valid is None:
        valid = torch.ones_like(dist, dtype=torch.bool)
    if kind == "mean":
        return torch.where(valid, dist, 0).sum((-1, -2)) / valid.sum((-1, -2)).clamp(min=1)
    masked = torch.where(valid, dist, _INF)
    if kind == "min":
        return masked.amin((-1, -2))
    return _bpwr(masked, k)


def _bpwr(masked: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy best pairs without replacement on matrices whose excluded entries are +inf."""
    lead = masked.shape[:-2]
    s1, s2 = masked.shape[-2:]
    work = masked.reshape(-1, s1, s2).clone()
    total = torch.zeros(work.shape[0], dtype=work.dtype, device=work.device)
    taken = torch.zeros_like(total)
    for _ in range(min(k, s1, s2)):
        value, where = work.flatten(1).min(dim=1)  # first minimum in row-major order
        ok = torch.isfinite(value)
        if not bool(ok.any()):
            break
        total += torch.where(ok, value, 0)
        taken += ok.to(total.dtype)
        pick = ok.nonzero().squeeze(1)  # remove the chosen pair's row and column
        work[pick, where[pick] // s2, :] = _INF
        work[pick, :, where[pick] % s2] = _INF
    song = torch.where(taken > 0, total / taken.clamp(min=1), torch.full_like(total, _INF))
    return song.reshape(lead)


# ---------------------------------------------------------------- streaming over a store


def _read(store: Store, cache: dict[str, np.ndarray] | None, key: str) -> np.ndarray:
    return cache[key] if cache is not None and key in cache else store[key]


def clews_song_distances(
    store: Store,
    query_keys: Sequence[str],
    candidate_keys: Sequence[str],
    redux: str = "bpwr-5",
    block: int = 32,
    device: str | torch.device = "cpu",
    cache_bytes: int = 2 * 2**30,
    workers: Workers | None = None,
) -> np.ndarray | None:
    """Song-pair distances (n_queries, n_candidates) float32 for keys of a CLEWS store (with
    ``workers``: this process computes every world-th block pair; rank 0 gets the matrix, the
    others None).

    Songs are sorted by length and processed ``block`` songs at a time (similar lengths share a
    block, so little padding is computed). When queries and candidates are the same keys, only
    blocks on and above the diagonal are computed and mirrored (the reductions are symmetric).
    Candidate embeddings are kept in memory (fp16, as stored) when they fit in ``cache_bytes``;
    otherwise they are read from the store again for every query block."""
    parse_redux(redux)
    if block < 1:
        raise UserError(f"--block {block}: must be at least 1")
    for key in (*query_keys, *candidate_keys):
        if key not in store:
            raise UserError(f"{store.directory}: key {key!r} is not in the store")
    device = torch.device(device)
    symmetric = list(query_keys) == list(candidate_keys)
    qorder = np.argsort([store.rows(k) for k in query_keys], kind="stable")
    corder = qorder if symmetric else np.argsort([store.rows(k) for k in candidate_keys], kind="stable")
    qkeys = [query_keys[i] for i in qorder]
    ckeys = [candidate_keys[i] for i in corder]
    cand_bytes = sum(store.rows(k) for k in ckeys) * store.dim * 2
    cache = {k: store[k] for k in ckeys} if cand_bytes <= cache_bytes else None
    qspans = [(i, min(i + block, len(qkeys))) for i in range(0, len(qkeys), block)]
    cspans = [(i, min(i + block, len(ckeys))) for i in range(0, len(ckeys), block)]
    pairs = [(qb, cb) for qb in range(len(qspans)) for cb in range(qb if symmetric else 0, len(cspans))]
    workers = workers or Workers()

    def blocks() -> Iterator[tuple[int, int, np.ndarray]]:
        mine = workers.share(pairs)
        with ui.progress(transient=True) as bar:
            task = bar.add_task("CLEWS distances", total=len(mine), status=redux)
            loaded: tuple = (-1, None, None)
            for qb, cb in mine:
                (q0, q1), (c0, c1) = qspans[qb], cspans[cb]
                if loaded[0] != qb:  # pairs come row by row: each query block is read once
                    loaded = (qb, *pad_sequences([_read(store, cache, k) for k in qkeys[q0:q1]], device=device))
                _, q, qmask = loaded
                c, cmask = pad_sequences([_read(store, cache, k) for k in ckeys[c0:c1]], device=device)
                valid = qmask[:, None, :, None] & cmask[None, :, None, :]
                yield qb, cb, reduce_pairs(block_distances(q, c), redux, valid).cpu().numpy()
                bar.advance(task)
                workers.check()

    done: Iterable[tuple[int, int, np.ndarray]] = blocks()
    if workers.world > 1:  # rank 0 assembles every process's blocks
        parts = workers.gather_object(list(done))
        if parts is None:
            return None
        done = (b for part in parts for b in part)
    ordered = np.empty((len(qkeys), len(ckeys)), np.float32)
    for qb, cb, red in done:
        (q0, q1), (c0, c1) = qspans[qb], cspans[cb]
        ordered[q0:q1, c0:c1] = red
        if symmetric and cb != qb:
            ordered[c0:c1, q0:q1] = red.T
    out = np.empty_like(ordered)
    out[np.ix_(qorder, corder)] = ordered
    return out


def clews_distances_to(query: np.ndarray, candidates: Sequence[np.ndarray], redux: str = "bpwr-5",
                       block: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """(len(candidates),) float32 distances of one song's shingle embeddings to each candidate's,
    reduced as ``clews_song_distances`` does (catalogue search: a query against its candidates)."""
    parse_redux(redux)
    if not len(candidates):
        return np.zeros(0, np.float32)
    device = torch.device(device)
    q, qmask = pad_sequences([query], device=device)
    out = []
    for start in range(0, len(candidates), block):
        c, cmask = pad_sequences(candidates[start:start + block], device=device)
        valid = qmask[:, None, :, None] & cmask[None, :, None, :]
        out.append(reduce_pairs(block_distances(q, c), redux, valid)[0].cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def clews_distance_matrix(store: Store, split: DatasetSplit, redux: str = "bpwr-5", block: int = 32,
                          device: str | torch.device = "cpu", workers: Workers | None = None) -> DistanceMatrix | None:
    """All-against-all matrix of the split's versions that are in the store (queries = candidates),
    ready for ``write_matrix`` and ``retrieval_metrics`` (None on ranks other than 0)."""
    if store.manifest.get("kind") != "clews":
        raise UserError(f"{store.directory}: not a CLEWS store (kind {store.manifest.get('kind')!r}); "
                        "make one with 'wealy extract clews'")
    kept = split.restrict(store.keys())
    if not kept.versions:
        raise UserError(f"{store.directory}: no version of {split.name}/{split.split} with >= 2 stored versions "
                        "per clique")
    keys = kept.keys
    cliques = [v.clique for v in kept.versions]
    dist = clews_song_distances(store, keys, keys, redux=redux, block=block, device=device, workers=workers)
    if dist is None:
        return None
    meta = {"features": "clews", "redux": redux, "distance": "normalised squared euclidean per shingle pair",
            "dataset": split.name, "split": split.split, "store": str(store.directory),
            "store_settings": store.settings}
    return DistanceMatrix(dist, keys, keys, cliques, cliques, meta)


def write_clews_distances(store_dir: Path, data: DataSettings, opts: ClewsDistanceOptions, path: Path,
                          fmt: MatrixFormat, ties: str = "expected",
                          workers: Workers | None = None) -> tuple[tuple[int, int], Metrics] | None:
    """CLEWS shingle embeddings → song distances by ``opts.redux``, streamed by blocks, written
    to ``path`` by rank 0; returns the matrix shape and its metrics (None on other ranks)."""
    workers = workers or Workers(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    split = load_split(data.dataset, data.split, data.metadata, check_audio=False)
    matrix = clews_distance_matrix(Store(store_dir), split, redux=opts.redux, block=opts.block,
                                   device=workers.device, workers=workers)
    if matrix is None:
        return None
    write_matrix(path, matrix, fmt)
    metrics = retrieval_metrics(matrix.distances, matrix.query_cliques, matrix.candidate_cliques,
                                matrix.query_keys, matrix.candidate_keys, ties=ties)
    return matrix.distances.shape, metrics
