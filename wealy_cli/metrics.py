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
:class:`RankAccumulator` takes row blocks as they are produced, so a caller never has to
hold a full matrix (see ``retrieval.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

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
                       query_index: np.ndarray | None = None, n_skipped: int = 0) -> "Metrics":
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


# ---------------------------------------------------------------- accumulation by blocks


class RankAccumulator:
    """Per-query metrics from distance rows given block by block (any order, any block size)."""

    def __init__(self, query_cliques: Sequence[str], candidate_cliques: Sequence[str],
                 query_keys: Sequence[str] | None = None, candidate_keys: Sequence[str] | None = None,
                 diagonal_is_self: bool = False) -> None:
        self.n_queries = len(query_cliques)
        self.n_candidates = len(candidate_cliques)
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
            block = block[torch.as_tensor(keep)]
            qidx = qidx[keep]
            rel = [r for r, k in zip(rel, keep) if k]
        ap, first, rp = _rank_block(block, rel, self.self_index[qidx])
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


def _rank_block(block: torch.Tensor, rel: list[np.ndarray], self_idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, first relevant rank and RP (%) of each row; every row has ≥ 1 relevant."""
    b, n = block.shape
    # float16/32 are compared in float32 (exact); anything else in float64 (no new ties).
    exact32 = block.dtype in (torch.float16, torch.bfloat16, torch.float32)
    d = torch.nan_to_num(block.to(torch.float32 if exact32 else torch.float64), nan=math.inf)
    r_count = torch.tensor([len(r) for r in rel], dtype=torch.int64)
    r_max = int(r_count.max())
    # Sorted relevant distances per row, padded with +inf (the padding never lowers a count).
    idx = torch.zeros((b, r_max), dtype=torch.int64)
    valid = torch.arange(r_max)[None, :] < r_count[:, None]
    idx[valid] = torch.from_numpy(np.concatenate(rel))
    thresholds = d.gather(1, idx).masked_fill(~valid, math.inf).sort(dim=1).values
    # For every candidate: the first threshold it does not exceed; it counts for that one and on.
    first_at = torch.searchsorted(thresholds, d, side="left")
    hist = torch.zeros((b, r_max + 1), dtype=torch.int64)
    hist.scatter_add_(1, first_at, torch.ones((1, 1), dtype=torch.int64).expand(b, n))
    at_or_below = hist.cumsum(1)[:, :r_max]  # candidates with distance ≤ threshold k
    # Remove the relevant candidates themselves and the query's own entry from those counts.
    rel_below = torch.searchsorted(thresholds, thresholds, side="right").minimum(r_count[:, None])
    has_self = torch.from_numpy(self_idx >= 0)
    self_d = d.gather(1, torch.from_numpy(np.maximum(self_idx, 0))[:, None])
    self_below = ((self_d <= thresholds) & has_self[:, None]).to(torch.int64)
    nonrel_above = (at_or_below - rel_below - self_below).to(torch.float64)
    k = torch.arange(1, r_max + 1, dtype=torch.float64)[None, :]
    position = k + nonrel_above  # 1-based rank of the k-th relevant candidate
    validf = valid.to(torch.float64)
    ap = ((k / position) * validf).sum(1) / r_count
    first = position[:, 0].to(torch.int64)
    n_nonrel = (n - r_count - has_self.to(torch.int64)).to(torch.float64)
    rp = (nonrel_above * validf).sum(1) / r_count / n_nonrel.clamp(min=1) * 100.0
    return ap.numpy(), first.numpy(), rp.numpy()


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
