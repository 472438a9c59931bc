"""Song-to-song distances of chunk embeddings, computed tile by tile.

The distance between two songs is the mean of the k smallest chunk-pair cosine distances
(``topk`` 1 = 1 − the largest cosine) of their L2-normalised chunk embeddings (``chunks.py``).

All-against-all evaluation never holds a chunk × chunk (or song × song) matrix: songs are
sorted by chunk count and clique size and cut into tiles; each pair of tiles (I ≤ J) gives
one small distance block that is used twice (rows of I, and transposed, rows of J) — the
matrix is symmetric, so only half of the products are computed. For each tile row the block
adds, per relevant threshold, how many non-relevant candidates are strictly below it and how
many tie with it (``metrics.count_below_and_tied``); the counts are integers, so any split of
the tile pairs (over workers, in any order) sums to exactly the same result, with either tie rule.

On a GPU (``device="cuda"``) the tiles, the products and the counts stay on the device; products
are plain float32 (no TF32), so distances match the CPU's to rounding and the counts are the
CPU's except for candidates within rounding of a relevant distance.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.store import Store
from wealy_cli.ranking.late import late_distances
from wealy_cli.ranking.metrics import (
    Metrics,
    check_ties,
    count_below_and_tied,
    pad_thresholds,
    per_query_metrics,
)

TILE_ROWS = 2048  # chunk rows per tile: the block of one tile pair is at most 2048² values


# ---------------------------------------------------------------- songs in tiles


@dataclass
class Tile:
    """Songs ``index`` (positions in the song list) as padded chunk embeddings."""

    index: np.ndarray  # (a,)
    chunks: torch.Tensor  # (a, C, d), zero rows where not valid
    valid: torch.Tensor  # (a, C) bool
    n_chunks: torch.Tensor  # (a,)
    clique_ids: torch.Tensor  # (a,)
    late_fraction: float | None = None  # set: rows of a late-interaction model, scored by ranking/late.py

    def to(self, device: str | torch.device | None) -> Tile:
        """This tile with its tensors on ``device`` (itself when they are there already)."""
        if device is None or torch.device(device) == self.chunks.device:
            return self
        return Tile(self.index, self.chunks.to(device), self.valid.to(device), self.n_chunks.to(device),
                    self.clique_ids.to(device), self.late_fraction)


class SongSet:
    """L2-normalised chunk embeddings of songs, with their cliques, cut into tiles. With
    ``late_fraction`` the embeddings are a late-interaction model's rows, and song distances are
    ``ranking.late.late_distances`` with that fraction instead of top-k chunk distances."""

    def __init__(self, embeddings: Sequence[np.ndarray], cliques: Sequence[str], tile_rows: int = TILE_ROWS,
                 late_fraction: float | None = None):
        self.late_fraction = late_fraction
        if len(embeddings) != len(cliques):
            raise ValueError("one clique per song is needed")
        self.n = len(embeddings)
        self.cliques = [str(c) for c in cliques]
        ids: dict[str, int] = {}
        self.clique_ids = np.array([ids.setdefault(c, len(ids)) for c in self.cliques], dtype=np.int64)
        self.clique_size = np.bincount(self.clique_ids, minlength=len(ids))[self.clique_ids]
        self.n_chunks = np.array([len(e) for e in embeddings], dtype=np.int64)
        if self.n and self.n_chunks.min() < 1:
            raise ValueError("every song needs at least one chunk embedding")
        # Similar songs together: little padding, and tiles whose rows have similar R.
        self.order = np.lexsort((self.clique_ids, self.clique_size, self.n_chunks))
        self.tiles = list(self._make_tiles(embeddings, tile_rows))

    def _make_tiles(self, embeddings: Sequence[np.ndarray], tile_rows: int) -> Iterator[Tile]:
        start = 0
        while start < self.n:
            width = int(self.n_chunks[self.order[start]])
            stop = start + 1
            # Grow the tile while the padded chunk rows stay within budget.
            while stop < self.n and (stop - start + 1) * max(width, int(self.n_chunks[self.order[stop]])) <= tile_rows:
                width = max(width, int(self.n_chunks[self.order[stop]]))
                stop += 1
            index = self.order[start:stop]
            yield make_tile([embeddings[s] for s in index], index, self.clique_ids[index], self.late_fraction)
            start = stop

    def distance_name(self, topk: int) -> str:
        """What a song distance is, for results files."""
        if self.late_fraction is not None:
            return (f"late interaction: 1 - symmetric mean of the best row matches of the top {self.late_fraction:g} "
                    "of each song's rows")
        return f"mean of the {topk} smallest chunk cosine distances"

    def on(self, device: str | torch.device | None) -> list[Tile]:
        """The tiles with their tensors on ``device`` (None: where they are, the CPU)."""
        return [tile.to(device) for tile in self.tiles]

    def tile_pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.tiles)) for j in range(i, len(self.tiles))]


def make_tile(embeddings: Sequence[np.ndarray], index: np.ndarray, clique_ids: np.ndarray,
              late_fraction: float | None = None) -> Tile:
    """Songs as one padded tile; rows renormalised in float32 (float16 storage moved them off
    the unit sphere)."""
    n_chunks = np.array([len(e) for e in embeddings], dtype=np.int64)
    width = int(n_chunks.max())
    flat = F.normalize(torch.from_numpy(np.concatenate(embeddings).astype(np.float32, copy=False)), dim=-1)
    chunks = torch.zeros((len(embeddings), width, flat.shape[1]), dtype=torch.float32)
    song = np.repeat(np.arange(len(embeddings)), n_chunks)
    row = np.arange(len(flat)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    chunks[torch.from_numpy(song), torch.from_numpy(row)] = flat
    counts = torch.from_numpy(n_chunks)
    valid = torch.arange(width)[None, :] < counts[:, None]
    return Tile(np.asarray(index), chunks, valid, counts, torch.from_numpy(np.asarray(clique_ids, dtype=np.int64)),
                late_fraction)


def song_distances(a: Tile, b: Tile, topk: int) -> torch.Tensor:
    """(len(a), len(b)) float32: 1 − mean of the k largest chunk-pair cosines of each song pair
    (late-interaction tiles: the late distance, and ``topk`` is not used)."""
    if a.late_fraction is not None:
        return late_distances(a.chunks, a.valid, b.chunks, b.valid, a.late_fraction)
    if a.chunks.shape[1] == 1 and b.chunks.shape[1] == 1:
        return 1.0 - a.chunks[:, 0] @ b.chunks[:, 0].T
    na, ca, d = a.chunks.shape
    nb, cb, _ = b.chunks.shape
    sims = (a.chunks.reshape(na * ca, d) @ b.chunks.reshape(nb * cb, d).T).view(na, ca, nb, cb)
    if topk == 1 or ca * cb == 1:  # max over both chunk axes in place: no permuted copy
        if not (bool(a.valid.all()) and bool(b.valid.all())):
            sims = sims.masked_fill(~(a.valid[:, :, None, None] & b.valid[None, None, :, :]), -math.inf)
        return 1.0 - sims.amax(dim=(1, 3))
    sims = sims.permute(0, 2, 1, 3).reshape(na, nb, ca * cb)
    pair_valid = (a.valid[:, None, :, None] & b.valid[None, :, None, :]).reshape(na, nb, ca * cb)
    sims = sims.masked_fill(~pair_valid, -math.inf)
    k = min(topk, ca * cb)
    if k == 1:
        return 1.0 - sims.max(dim=2).values
    best = sims.topk(k, dim=2).values
    n_pairs = (a.n_chunks[:, None] * b.n_chunks[None, :]).clamp(max=topk).to(torch.float32)
    return 1.0 - best.masked_fill(torch.isinf(best), 0.0).sum(2) / n_pairs


def song_distances_to(query: np.ndarray, candidates: Sequence[np.ndarray], topk: int,
                      tile_rows: int = TILE_ROWS, late_fraction: float | None = None) -> np.ndarray:
    """(len(candidates),) float32 distances of one song to each candidate, by ``song_distances``
    (the numbers of a row of ``dense_distances``); candidates are tiled by chunk count, as SongSet
    tiles songs, and computed on one thread (small products: threads cost more than they give)."""
    n = len(candidates)
    out = np.empty(n, np.float32)
    if not n:
        return out
    q = make_tile([query], np.zeros(1, np.int64), np.zeros(1, np.int64), late_fraction)
    counts = np.array([len(c) for c in candidates], dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = 0
        while start < n:  # tiles of about tile_rows padded chunk rows (sorted counts: the last is the widest)
            stop = min(n, start + max(1, tile_rows // int(counts[order[start]])))
            while stop > start + 1 and (stop - start) * int(counts[order[stop - 1]]) > tile_rows:
                stop -= 1
            index = order[start:stop]
            tile = make_tile([candidates[i] for i in index], index, np.zeros(len(index), np.int64), late_fraction)
            out[index] = song_distances(q, tile, topk)[0].numpy()
            start = stop
    finally:
        torch.set_num_threads(threads)
    return out


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 products computed as float32 (no TF32 on GPUs, no bfloat16 passes on CPUs) while
    distances are ranked: a GPU run must rank as the CPU does."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


Block = tuple[int, int, np.ndarray]  # tile i, tile j (i ≤ j), their (len(i), len(j)) distances


def dense_distances(songs: SongSet, topk: int, label: str = "distances",
                    device: str | torch.device | None = None) -> np.ndarray:
    """The full (n, n) float32 song distance matrix in the original song order, computed on
    ``device`` (default: the CPU)."""
    return assemble_distances(songs, distance_blocks(songs, topk, label=label, device=device))


def distance_blocks(songs: SongSet, topk: int, rank: int = 0, world: int = 1, label: str = "distances",
                    device: str | torch.device | None = None,
                    check: Callable[[], None] | None = None) -> Iterator[Block]:
    """The distance blocks of tile pairs rank::world (every pair once, I ≤ J), one at a time,
    computed on ``device``; ``check`` is called after every pair (it raises to stop the run)."""
    pairs = songs.tile_pairs()[rank::world]
    tiles = songs.on(device)
    with ui.progress() as bar, exact_float32():
        task = bar.add_task(label, total=len(pairs), status="")
        for i, j in pairs:
            yield i, j, song_distances(tiles[i], tiles[j], topk).cpu().numpy()
            bar.advance(task)
            if check is not None:
                check()


def assemble_distances(songs: SongSet, blocks: Iterable[Block]) -> np.ndarray:
    """The (n, n) matrix in the original song order from the blocks of every tile pair."""
    out = np.zeros((songs.n, songs.n), dtype=np.float32)
    for i, j, block in blocks:
        a, b = songs.tiles[i], songs.tiles[j]
        out[np.ix_(a.index, b.index)] = block
        if i != j:
            out[np.ix_(b.index, a.index)] = block.T
    return out


ROW_BLOCK_BYTES = 2**28  # one block of whole distance rows (256 MB of float32)


def row_blocks(songs: SongSet, block_bytes: int = ROW_BLOCK_BYTES) -> list[tuple[int, int, int]]:
    """(tile, first row, end row) of every block of whole distance rows, in order."""
    per_block = max(1, block_bytes // (4 * max(1, songs.n)))
    return [(t, start, start + per_block) for t, tile in enumerate(songs.tiles)
            for start in range(0, len(tile.index), per_block)]


def distance_rows(songs: SongSet, topk: int, block_bytes: int = ROW_BLOCK_BYTES,
                  device: str | torch.device | None = None, rank: int = 0,
                  world: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Whole rows of the song distance matrix, tile by tile: (song positions, float32 block of
    shape (rows, n) in the original song order), computed on ``device`` (default: the CPU).
    Every block is computed against every tile (no symmetry: a row block must be complete), at
    most ``block_bytes`` at a time; this worker computes the blocks rank::world of ``row_blocks``."""
    tiles = songs.on(device)
    with exact_float32():
        for t, start, stop in row_blocks(songs, block_bytes)[rank::world]:
            part = _tile_rows(tiles[t], start, stop)
            out = np.empty((len(part.index), songs.n), dtype=np.float32)
            for other in tiles:
                out[:, other.index] = song_distances(part, other, topk).cpu().numpy()
            yield part.index, out


def _tile_rows(tile: Tile, start: int, stop: int) -> Tile:
    if start == 0 and stop >= len(tile.index):
        return tile
    return Tile(tile.index[start:stop], tile.chunks[start:stop], tile.valid[start:stop],
                tile.n_chunks[start:stop], tile.clique_ids[start:stop], tile.late_fraction)


# ---------------------------------------------------------------- all-against-all metrics


class TileCounts:
    """Relevant thresholds and non-relevant counts of every tile's rows (see module doc), on
    ``device`` (default: the CPU)."""

    def __init__(self, songs: SongSet, topk: int, device: str | torch.device | None = None) -> None:
        self.songs = songs
        self.tiles = songs.on(device)
        relevant = _relevant_distances(songs, topk, tiles=self.tiles)
        self.thresholds: list[torch.Tensor] = []
        self.r_count: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        for tile in self.tiles:
            padded, r = pad_thresholds([relevant[s] for s in tile.index])
            self.thresholds.append(padded.to(tile.chunks.device, torch.float32))
            self.r_count.append(r)
            self.counts.append(torch.zeros((2, *padded.shape), dtype=torch.int64,
                                           device=tile.chunks.device))  # below, tied

    def add_pair(self, i: int, j: int, topk: int) -> None:
        a, b = self.tiles[i], self.tiles[j]
        block = song_distances(a, b, topk)
        same = a.clique_ids[:, None] == b.clique_ids[None, :]  # relevant or the song itself
        self.counts[i] += count_below_and_tied(self.thresholds[i], block, same)
        if i != j:
            self.counts[j] += count_below_and_tied(self.thresholds[j], block.T.contiguous(), same.T.contiguous())

    def flat(self) -> torch.Tensor:
        """All counts as one vector (to sum over workers)."""
        return torch.cat([c.flatten() for c in self.counts])

    def load_flat(self, flat: torch.Tensor) -> None:
        start = 0
        for c in self.counts:
            c.copy_(flat[start:start + c.numel()].view_as(c))
            start += c.numel()

    def result(self, ties: str = "expected") -> Metrics:
        ties = check_ties(ties)
        parts = []
        for tile, counts, thresholds, r in zip(self.songs.tiles, self.counts, self.thresholds, self.r_count):
            counts, thresholds = counts.cpu(), thresholds.cpu()
            keep = r > 0
            if not keep.any():
                continue
            n_nonrelevant = self.songs.n - r[keep]  # M = N − R: the song itself is one of them
            ap, first, rp = per_query_metrics(counts[:, keep], thresholds[keep], r[keep], n_nonrelevant, ties)
            parts.append((tile.index[keep.numpy()], ap, first, rp))
        skipped = int((self.songs.clique_size < 2).sum())
        if not parts:
            return Metrics.from_per_query(np.zeros(0), np.zeros(0), np.zeros(0), None, skipped, ties)
        qidx, ap, first, rp = (np.concatenate(p) for p in zip(*parts))
        return Metrics.from_per_query(ap, first, rp, qidx, skipped, ties)


def _relevant_distances(songs: SongSet, topk: int, budget: int = TILE_ROWS,
                        tiles: list[Tile] | None = None) -> list[np.ndarray]:
    """For each song, its distances to the other songs of its clique, computed from ``tiles``
    (``songs.tiles`` moved to a device, or themselves). Small cliques are batched into one block
    (only its diagonal blocks are used): many tiny products cost more in call overhead than the
    few wasted values."""
    tiles = songs.tiles if tiles is None else tiles
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * songs.n
    members: dict[int, list[int]] = {}
    for s in songs.order:  # tile order
        members.setdefault(int(songs.clique_ids[s]), []).append(int(s))
    where = {int(s): (t, r) for t, tile in enumerate(songs.tiles) for r, s in enumerate(tile.index)}
    batch: list[list[int]] = []
    for group in [g for g in members.values() if len(g) > 1] + [[]]:  # [] flushes the last batch
        rows = sum(len(g) for g in batch) + len(group)
        if batch and (not group or rows * int(songs.n_chunks[sum(batch + [group], [])].max()) > budget):
            flat = sum(batch, [])
            d = song_distances(*(2 * [_sub_tile(songs, flat, where, tiles)]), topk).cpu().numpy()
            start = 0
            for g in batch:
                block = d[start:start + len(g), start:start + len(g)]
                for row, s in enumerate(g):
                    out[s] = np.delete(block[row], row)
                start += len(g)
            batch = []
        if group:
            batch.append(group)
    return out


def _sub_tile(songs: SongSet, group: list[int], where: dict[int, tuple[int, int]], tiles: list[Tile]) -> Tile:
    width = int(songs.n_chunks[group].max())
    dim = tiles[0].chunks.shape[2]
    device = tiles[0].chunks.device
    chunks = torch.zeros((len(group), width, dim), device=device)
    for row, s in enumerate(group):
        t, r = where[s]
        n = int(songs.n_chunks[s])
        chunks[row, :n] = tiles[t].chunks[r, :n]
    n_chunks = torch.from_numpy(songs.n_chunks[group]).to(device)
    return Tile(np.asarray(group), chunks, torch.arange(width, device=device)[None, :] < n_chunks[:, None], n_chunks,
                torch.from_numpy(songs.clique_ids[group]).to(device), songs.late_fraction)


def all_against_all(songs: SongSet, topk: int, rank: int = 0, world: int = 1,
                    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    label: str = "ranking", device: str | torch.device | None = None,
                    ties: str = "expected", check: Callable[[], None] | None = None) -> Metrics:
    """Exact MAP/MR1/ARP of all songs against all, computed on ``device`` (default: the CPU);
    this worker does tile pairs rank::world and ``reduce`` sums the flat counts over workers
    (``Workers.all_reduce``); ``check`` is called after every pair (it raises to stop the run)."""
    if topk < 1:
        raise UserError(f"--topk must be ≥ 1, got {topk}")
    check_ties(ties)
    with exact_float32():
        counts = TileCounts(songs, topk, device)
    pairs = songs.tile_pairs()[rank::world]
    with ui.progress() as bar, exact_float32():
        task = bar.add_task(label, total=len(pairs), status=f"{songs.n} songs, {len(songs.tiles)} tiles")
        for i, j in pairs:
            counts.add_pair(i, j, topk)
            bar.advance(task)
            if check is not None:
                check()
    if reduce is not None and world > 1:
        counts.load_flat(reduce(counts.flat()))
    return counts.result(ties)


def load_songs(cache: Store, keys: Sequence[str], cliques: Sequence[str], tile_rows: int = TILE_ROWS,
               late_fraction: float | None = None) -> SongSet:
    """Chunk (late interaction: row) embeddings of ``keys`` from a cache store."""
    missing = [k for k in keys if k not in cache]
    if missing:
        raise UserError(f"{cache.directory}: {len(missing)} songs have no chunk embeddings (e.g. {missing[0]!r})")
    return SongSet([cache[k] for k in keys], cliques, tile_rows, late_fraction)


def summary(songs: SongSet) -> dict[str, Any]:
    return {"songs": songs.n, "chunks": int(songs.n_chunks.sum()), "tiles": len(songs.tiles),
            "tile pairs": len(songs.tile_pairs())}


def memory_needed(n_queries: int, n_candidates: int) -> int:
    """Bytes of a dense float32 distance matrix."""
    return 4 * n_queries * n_candidates


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable), else a conservative 4 GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
