"""Retrieval metrics of a distance matrix: MAP, MR1, ARP and their 95 % intervals.

Every query is a version; its relevant candidates are the other versions of its clique.

- The query's own entry (the candidate with the same key; without keys, the diagonal of a
  square matrix) is ranked last and is not relevant: it never counts above anything and is
  not counted among the non-relevant candidates.
- Ties: candidates are ordered by (distance, relevant after non-relevant, candidate index).
  This is pessimistic: a relevant candidate tied with a non-relevant one is ranked below it,
  so a constant matrix never scores above chance. NaN distances count as +inf.
- AP    = (1/R) Σ_k k / pos_k, pos_k the 1-based rank of the k-th relevant candidate (uncapped).
- MR1   = mean over queries of pos_1 (lower is better).
- ARP   = mean over queries of: mean over relevant candidates of
          (non-relevant candidates ranked above it) / (all non-relevant candidates) × 100.
          (0 is perfect; a query with no non-relevant candidate has 0.)
- 95 % interval half-width: 1.96 · std / √n (population std, n = evaluated queries).
- Queries without any relevant candidate are skipped and counted in ``n_skipped``.

The ranks are computed per block of queries without sorting whole rows: sort only the R
relevant distances of a query, then for every candidate find (binary search) how many
relevant thresholds it is below; a cumulative histogram gives, for each relevant candidate,
how many candidates are at or below its distance. Cost O(n log R) per query.
:class:`RankAccumulator` takes row blocks as they are produced; ``tiles.py`` feeds
``count_at_or_below`` tile by tile so that no full matrix is ever held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Z95 = 1.96
BLOCK_ELEMENTS = 2**24  # distances per query block (64 MB of float32)


@dataclass
class Metrics:
    """Aggregate metrics plus the per-query values they come from."""

    map: float
    mr1: float
    arp: float
    map_ci: float
    mr1_ci: float
    arp_ci: float
    n_queries: int
    n_skipped: int = 0
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    first_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    rp: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per-query ARP (%)
    query_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The aggregate figures (JSON-safe); per-query arrays are left out."""
        return {
            "map": self.map, "map_ci": self.map_ci,
            "mr1": self.mr1, "mr1_ci": self.mr1_ci,
            "arp": self.arp, "arp_ci": self.arp_ci,
            "n_queries": self.n_queries, "n_skipped": self.n_skipped,
        }

    @classmethod
    def from_per_query(cls, ap: np.ndarray, first_rank: np.ndarray, rp: np.ndarray,
                       query_index: np.ndarray | None = None, n_skipped: int = 0) -> Metrics:
        """Aggregate per-query values (e.g. gathered from several workers)."""
        ap = np.asarray(ap, dtype=np.float64)
        first_rank = np.asarray(first_rank, dtype=np.int64)
        rp = np.asarray(rp, dtype=np.float64)
        if query_index is None:
            query_index = np.arange(len(ap), dtype=np.int64)
        order = np.argsort(query_index, kind="stable")
        n = len(ap)
        return cls(
            map=_mean(ap), mr1=_mean(first_rank), arp=_mean(rp),
            map_ci=_ci(ap), mr1_ci=_ci(first_rank), arp_ci=_ci(rp),
            n_queries=n, n_skipped=int(n_skipped),
            ap=ap[order], first_rank=first_rank[order], rp=rp[order],
            query_index=np.asarray(query_index, dtype=np.int64)[order],
        )


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _ci(x: np.ndarray) -> float:
    return float(Z95 * np.std(np.asarray(x, dtype=np.float64)) / math.sqrt(len(x))) if len(x) else float("nan")


def comp(metrics: Metrics) -> float:
    """Validation score COMP = sqrt(ARP/100 · (1 − MAP)); ARP is converted from percent to a
    fraction so that COMP lies in [0, 1] (lower is better)."""
    return math.sqrt(max(metrics.arp, 0.0) / 100.0 * max(1.0 - metrics.map, 0.0))


# ---------------------------------------------------------------- counting


def pad_thresholds(thresholds: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted relevant distances of b queries as a (b, R_max) tensor padded with +inf, and R."""
    r_count = torch.tensor([len(t) for t in thresholds], dtype=torch.int64)
    r_max = max(1, int(r_count.max())) if len(thresholds) else 1
    padded = torch.full((len(thresholds), r_max), math.inf, dtype=torch.float64)
    valid = torch.arange(r_max)[None, :] < r_count[:, None]
    if int(r_count.sum()):
        padded[valid] = torch.from_numpy(np.concatenate([np.asarray(t, np.float64) for t in thresholds]))
    padded = torch.nan_to_num(padded, nan=math.inf, posinf=math.inf, neginf=-math.inf).sort(dim=1).values
    return padded, r_count


def count_at_or_below(thresholds: torch.Tensor, distances: torch.Tensor, exclude: torch.Tensor | None
                      ) -> torch.Tensor:
    """(b, R) counts: candidates of each row, not excluded, with distance ≤ each threshold.

    For every candidate, a binary search finds the first threshold it does not exceed; it
    counts for that threshold and all larger ones (cumulative histogram). Counts of disjoint
    candidate sets add up, so a row may be given in pieces (column tiles, several workers).
    Runs on the device of ``distances`` (the counts come back there)."""
    b, m = distances.shape
    r_max = thresholds.shape[1]
    exact32 = distances.dtype in (torch.float16, torch.bfloat16, torch.float32)
    d = distances.to(torch.float32 if exact32 else torch.float64)
    d = torch.nan_to_num(d, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    first_at = torch.searchsorted(thresholds.to(d.device, d.dtype).contiguous(), d.contiguous(), side="left")
    if exclude is not None:
        first_at.masked_fill_(exclude.to(d.device), r_max)  # lands in the overflow bin, never counted
    hist = torch.zeros((b, r_max + 1), dtype=torch.int64, device=d.device)
    hist.scatter_add_(1, first_at, torch.ones((1, 1), dtype=torch.int64, device=d.device).expand(b, m))
    return hist.cumsum(1)[:, :r_max]


def per_query_metrics(counts: torch.Tensor, r_count: torch.Tensor, n_nonrel: torch.Tensor
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, first relevant rank and RP (%) from the non-relevant counts at each relevant threshold."""
    r_max = counts.shape[1]
    k = torch.arange(1, r_max + 1, dtype=torch.float64)[None, :]
    valid = (k <= r_count[:, None]).to(torch.float64)
    above = counts.to(torch.float64)
    position = k + above  # 1-based rank of the k-th relevant candidate
    ap = ((k / position) * valid).sum(1) / r_count
    first = position[:, 0].to(torch.int64)
    rp = (above * valid).sum(1) / r_count / n_nonrel.to(torch.float64).clamp(min=1) * 100.0
    return ap.numpy(), first.numpy(), rp.numpy()


# ---------------------------------------------------------------- accumulation by row blocks


class RankAccumulator:
    """Per-query metrics from whole distance rows given block by block (any order, any size)."""

    def __init__(self, query_cliques: Sequence[str], candidate_cliques: Sequence[str],
                 query_keys: Sequence[str] | None = None, candidate_keys: Sequence[str] | None = None,
                 diagonal_is_self: bool = False) -> None:
        self.n_queries = len(query_cliques)
        self.n_candidates = len(candidate_cliques)
        ids: dict[str, int] = {}
        self.candidate_ids = torch.tensor([ids.setdefault(str(c), len(ids)) for c in candidate_cliques],
                                          dtype=torch.int64)
        self.query_ids = torch.tensor([ids.get(str(c), -1) for c in query_cliques], dtype=torch.int64)
        self.relevant = _relevant_lists(query_cliques, candidate_cliques)
        self.self_index = _self_indices(self.n_queries, self.n_candidates, query_keys, candidate_keys,
                                        diagonal_is_self)
        self._parts: list[tuple[np.ndarray, ...]] = []
        self.n_skipped = 0

    def add(self, query_index: Sequence[int] | np.ndarray, distances: np.ndarray | torch.Tensor) -> None:
        """Rank the rows ``distances`` (b × n_candidates) of the queries ``query_index``."""
        qidx = np.asarray(query_index, dtype=np.int64)
        block = torch.as_tensor(distances)
        if block.shape != (len(qidx), self.n_candidates):
            raise ValueError(f"distance block has shape {tuple(block.shape)}, "
                             f"expected ({len(qidx)}, {self.n_candidates})")
        rel = [self.relevant[q] if self.self_index[q] < 0 else
               self.relevant[q][self.relevant[q] != self.self_index[q]] for q in qidx]
        keep = np.array([len(r) > 0 for r in rel], dtype=bool)
        self.n_skipped += int((~keep).sum())
        if not keep.any():
            return
        if not keep.all():
            block = block[torch.from_numpy(keep)]
            qidx = qidx[keep]
            rel = [r for r, k in zip(rel, keep) if k]
        thresholds = pad_thresholds([block[i, torch.from_numpy(r)].to(torch.float64).numpy()
                                     for i, r in enumerate(rel)])
        exclude = self.query_ids[torch.from_numpy(qidx)][:, None] == self.candidate_ids[None, :]
        self_idx = self.self_index[qidx]
        has_self = np.flatnonzero(self_idx >= 0)
        exclude[torch.from_numpy(has_self), torch.from_numpy(self_idx[has_self])] = True
        counts = count_at_or_below(thresholds[0], block, exclude)
        n_nonrel = (~exclude).sum(1)
        ap, first, rp = per_query_metrics(counts, thresholds[1], n_nonrel)
        self._parts.append((qidx, ap, first, rp))

    def per_query(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(query_index, ap, first_rank, rp) of the queries added so far."""
        if not self._parts:
            z = np.zeros(0)
            return np.zeros(0, np.int64), z, np.zeros(0, np.int64), z
        return tuple(np.concatenate(p) for p in zip(*self._parts))  # type: ignore[return-value]

    def result(self) -> Metrics:
        qidx, ap, first, rp = self.per_query()
        return Metrics.from_per_query(ap, first, rp, qidx, self.n_skipped)


def _relevant_lists(query_cliques: Sequence[str], candidate_cliques: Sequence[str]) -> list[np.ndarray]:
    by_clique: dict[str, list[int]] = {}
    for j, c in enumerate(candidate_cliques):
        by_clique.setdefault(str(c), []).append(j)
    arrays = {c: np.asarray(v, dtype=np.int64) for c, v in by_clique.items()}
    empty = np.zeros(0, dtype=np.int64)
    return [arrays.get(str(c), empty) for c in query_cliques]


def _self_indices(n_q: int, n_c: int, query_keys: Sequence[str] | None,
                  candidate_keys: Sequence[str] | None, diagonal_is_self: bool) -> np.ndarray:
    if (query_keys is None) != (candidate_keys is None):
        raise ValueError("give both query_keys and candidate_keys, or neither")
    if query_keys is not None and candidate_keys is not None:
        if len(query_keys) != n_q or len(candidate_keys) != n_c:
            raise ValueError("keys and cliques differ in length")
        position = {k: j for j, k in enumerate(candidate_keys)}
        return np.array([position.get(k, -1) for k in query_keys], dtype=np.int64)
    if diagonal_is_self:
        return np.arange(n_q, dtype=np.int64)
    return np.full(n_q, -1, dtype=np.int64)


# ---------------------------------------------------------------- whole matrix


def retrieval_metrics(distances: np.ndarray, query_cliques: Sequence[str], candidate_cliques: Sequence[str],
                      query_keys: Sequence[str] | None = None,
                      candidate_keys: Sequence[str] | None = None) -> Metrics:
    """MAP, MR1, ARP (and intervals) of a query × candidate distance matrix (see module doc)."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or distances.shape != (len(query_cliques), len(candidate_cliques)):
        raise ValueError(f"distance matrix has shape {distances.shape}, expected "
                         f"({len(query_cliques)}, {len(candidate_cliques)}) from the cliques")
    square = distances.shape[0] == distances.shape[1]
    acc = RankAccumulator(query_cliques, candidate_cliques, query_keys, candidate_keys,
                          diagonal_is_self=square and query_keys is None)
    step = max(1, BLOCK_ELEMENTS // max(1, distances.shape[1]))
    for start in range(0, distances.shape[0], step):
        stop = min(start + step, distances.shape[0])
        acc.add(np.arange(start, stop), np.ascontiguousarray(distances[start:stop]))
    return acc.result()

