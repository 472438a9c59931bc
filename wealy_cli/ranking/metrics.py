"""Retrieval metrics of a distance matrix: MAP, MR1, ARP and their 95 % intervals.

Every query is a version; its relevant candidates are the other versions of its clique
(R of them); N is the number of candidates, the query's own entry included.

- The query's own entry (the candidate with the same key; without keys, the diagonal of a
  square matrix) is ranked last and is not relevant, as in the reference code (sony/clews
  ``lib/eval.py``: the query stays in the list at distance +inf): it never counts above a
  relevant candidate, but it is one of the M = N − R non-relevant items of ARP's denominator.
- Ties (``ties``): ``"expected"`` (default) is the expected value over all orders of tied
  candidates (McSherry & Najork, ECIR 2008): exact, deterministic, independent of candidate
  order, and a constant matrix scores exactly chance. ``"pessimistic"`` ranks a relevant
  candidate after every non-relevant one it ties with (a lower bound). NaN counts as +inf.
- AP    = (1/R) Σ_k rel_k · precision@k (uncapped).
- MR1   = mean over queries of the 1-based rank of the first relevant candidate (lower is better).
- ARP   = mean over queries of: mean over relevant candidates of
          (non-relevant candidates ranked above it) / M × 100 (0 is perfect).
- 95 % interval half-width: 1.96 · std / √n, std unbiased (ddof 1), n = evaluated queries.
- Queries without any relevant candidate are skipped and counted in ``n_skipped``.

Expected values walk the tie groups of a query in order: a group of n candidates, r of them
relevant, comes after c candidates of which t are relevant. The group adds to AP's precision
sum Σ_{j=1..n} (r/n)·(t + 1 + (j−1)(r−1)/(n−1)) / (c + j); MR1 is c + (n + 1)/(r + 1) for the
first group with r > 0; each relevant candidate of the group has (c − t) + (n − r)/2
non-relevant candidates above it.

The ranks are computed per block of queries without sorting whole rows: sort only the R
relevant distances of a query (the thresholds), then for every candidate find (binary search)
which thresholds it is below or equal to; cumulative histograms give, per threshold, how many
non-relevant candidates are strictly below it and how many tie with it. Both are integers, so
counts of disjoint candidate sets add up exactly (column tiles, several workers).
:class:`RankAccumulator` takes whole rows block by block (``count_rows``: comparisons per
distinct relevant distance, or a sort of the candidates up to the largest one); ``tiles.py``
feeds ``count_below_and_tied`` tile by tile so that no full matrix is ever held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from wealy_cli.core.errors import UserError

Z95 = 1.96
BLOCK_ELEMENTS = 2**24  # distances per query block (64 MB of float32)
Ties = Literal["expected", "pessimistic"]
TIES: tuple[str, ...] = ("expected", "pessimistic")
DIRECT_SUM_MAX = 64  # tie groups up to this size sum their terms; larger ones use digamma
_DIRECT_ITEMS = 2**14  # relevant candidates per direct-sum batch (memory bound)


def check_ties(ties: str) -> Ties:
    """``ties`` if it is a known rule, else a UserError naming ``--ties``."""
    if ties not in TIES:
        raise UserError(f"--ties {ties!r}: choose {' or '.join(TIES)}")
    return ties  # type: ignore[return-value]


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
    ties: str = "expected"
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    first_rank: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # expected: fractional
    rp: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per-query ARP (%)
    query_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The aggregate figures (JSON-safe) and the tie rule; per-query arrays are left out."""
        return {
            "map": self.map, "map_ci": self.map_ci,
            "mr1": self.mr1, "mr1_ci": self.mr1_ci,
            "arp": self.arp, "arp_ci": self.arp_ci,
            "n_queries": self.n_queries, "n_skipped": self.n_skipped,
            "ties": self.ties,
        }

    @classmethod
    def from_per_query(cls, ap: np.ndarray, first_rank: np.ndarray, rp: np.ndarray,
                       query_index: np.ndarray | None = None, n_skipped: int = 0,
                       ties: str = "expected") -> Metrics:
        """Aggregate per-query values (e.g. gathered from several workers)."""
        ap = np.asarray(ap, dtype=np.float64)
        first_rank = np.asarray(first_rank, dtype=np.float64)
        rp = np.asarray(rp, dtype=np.float64)
        if query_index is None:
            query_index = np.arange(len(ap), dtype=np.int64)
        order = np.argsort(query_index, kind="stable")
        n = len(ap)
        return cls(
            map=_mean(ap), mr1=_mean(first_rank), arp=_mean(rp),
            map_ci=_ci(ap), mr1_ci=_ci(first_rank), arp_ci=_ci(rp),
            n_queries=n, n_skipped=int(n_skipped), ties=ties,
            ap=ap[order], first_rank=first_rank[order], rp=rp[order],
            query_index=np.asarray(query_index, dtype=np.int64)[order],
        )


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _ci(x: np.ndarray) -> float:
    """1.96 · unbiased std / √n, as the reference test.py (torch ``.std()``); NaN below 2 values."""
    if len(x) < 2:
        return float("nan")
    return float(Z95 * np.std(np.asarray(x, dtype=np.float64), ddof=1) / math.sqrt(len(x)))


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


def count_below_and_tied(thresholds: torch.Tensor, distances: torch.Tensor, exclude: torch.Tensor | None
                         ) -> torch.Tensor:
    """(2, b, R) int64 counts of candidates of each row, not excluded: [0] strictly below each
    threshold, [1] equal to it.

    For every candidate a binary search finds the first threshold it does not exceed; a
    cumulative histogram gives the counts at or below each threshold. Candidates equal to that
    threshold (rare with continuous distances: found by one comparison) are counted apart, per
    tie group of thresholds. Counts of disjoint candidate sets add up, so a row may be given in
    pieces (column tiles, several workers). Runs on the device of ``distances`` (the counts come
    back there)."""
    b, m = distances.shape
    r_max = thresholds.shape[1]
    exact32 = distances.dtype in (torch.float16, torch.bfloat16, torch.float32)
    d = distances.to(torch.float32 if exact32 else torch.float64)
    d = torch.nan_to_num(d, nan=math.inf, posinf=math.inf, neginf=-math.inf).contiguous()
    dev = d.device
    thr = thresholds.to(dev, d.dtype).contiguous()
    first = torch.searchsorted(thr, d, side="left")  # first threshold ≥ d
    with_end = torch.cat([thr, torch.full((b, 1), math.inf, dtype=thr.dtype, device=dev)], 1)
    tied = with_end.gather(1, first) == d
    if exclude is not None:
        exclude = exclude.to(dev)
        first.masked_fill_(exclude, r_max)  # lands in the overflow bin, never counted
    hist = torch.zeros((b, r_max + 1), dtype=torch.int64, device=dev)
    hist.scatter_add_(1, first, torch.ones((1, 1), dtype=torch.int64, device=dev).expand(b, m))
    counts = torch.zeros((2, b, r_max), dtype=torch.int64, device=dev)
    counts[0] = hist.cumsum(1)[:, :r_max]  # at or below, for now
    rows, cols = torch.nonzero(tied, as_tuple=True) if bool(tied.any()) else (None, None)
    if rows is not None and exclude is not None:
        keep = ~exclude[rows, cols]
        rows, cols = rows[keep], cols[keep]
    if rows is not None and len(rows):
        # a tied candidate sits at the first threshold of its tie group: count it there, then
        # give every threshold of the group that count
        at_start = torch.zeros((b, r_max + 1), dtype=torch.int64, device=dev)
        at_start.index_put_((rows, first[rows, cols]), torch.ones(len(rows), dtype=torch.int64, device=dev),
                            accumulate=True)
        counts[1] = at_start.gather(1, torch.searchsorted(thr, thr, side="left"))
        counts[0] -= counts[1]
    return counts


@dataclass
class RelevantCounts:
    """Flat, per relevant candidate of b queries (each with ≥ 1): its query (``row``), its index
    among the query's sorted relevant distances (``k``), the first index and size of its tie group
    among them (``start``, ``size``), and the non-relevant candidates strictly below it and tied
    with it (``below``, ``tied``); ``r_count`` per query."""

    row: np.ndarray
    k: np.ndarray
    start: np.ndarray
    size: np.ndarray
    below: np.ndarray
    tied: np.ndarray
    r_count: np.ndarray


def count_rows(rows: Sequence[np.ndarray] | np.ndarray, relevant: Sequence[np.ndarray], self_index: np.ndarray
               ) -> RelevantCounts:
    """Counts for rows (float arrays without NaN; ``relevant``: each row's relevant candidate
    positions; the excluded candidates are exactly those and the query's own entry
    ``self_index``, −1: none): every candidate is counted, then the relevant ones (whose
    distances are the thresholds) and the own entry are taken off.

    A row with few distinct relevant distances is counted by one comparison pass per distance
    (vectorised, ~0.1 ns a value); one with many sorts its candidates up to the largest relevant
    distance and searches that. Both are much faster than a binary search per candidate."""
    parts = []
    for i, (d, rel) in enumerate(zip(rows, relevant)):
        thresholds = np.sort(d[rel])
        values, start, size = np.unique(thresholds, return_index=True, return_counts=True)
        below, tied = _count_row(d, values, int(self_index[i]))
        parts.append((np.full(len(rel), i), np.arange(len(rel)), np.repeat(start, size), np.repeat(size, size),
                      np.repeat(below - start, size), np.repeat(tied - size, size)))
    flat = [np.concatenate(x).astype(np.int64) for x in zip(*parts)]
    return RelevantCounts(*flat, r_count=np.array([len(r) for r in relevant], dtype=np.int64))


SORT_AFTER = 12  # rows with more distinct relevant distances sort instead of comparing


def _count_row(d: np.ndarray, values: np.ndarray, own: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of row ``d`` strictly below, and equal to, each sorted value; the own entry
    is not counted."""
    if len(values) <= SORT_AFTER:
        lt = np.array([np.count_nonzero(d < v) for v in values], dtype=np.int64)
        le = np.array([np.count_nonzero(d <= v) for v in values], dtype=np.int64)
    else:
        near = np.sort(d[d <= values[-1]])
        lt = np.searchsorted(near, values, side="left").astype(np.int64)
        le = np.searchsorted(near, values, side="right").astype(np.int64)
    if own >= 0:
        lt -= d[own] < values
        le -= d[own] <= values
    return lt, le - lt


def tie_groups(thresholds: torch.Tensor, r_count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sorted relevant threshold: the index of the first relevant candidate with the same
    distance (t) and how many relevant candidates share it (r); padding is not counted."""
    thr = thresholds.contiguous()
    start = torch.searchsorted(thr, thr, side="left")
    stop = torch.minimum(torch.searchsorted(thr, thr, side="right"), r_count[:, None])
    return start, stop - start


def harmonic_difference(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Σ_{i=0..n−1} 1/(x + i) = ψ(x + n) − ψ(x) to a relative 2e-15 (float64, x ≥ 1).

    For x ≥ 100 the asymptotic series of ψ, differenced term by term in forms without
    cancellation; below, where the sum is not small, scipy's digamma."""
    from scipy.special import digamma

    x, n = np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = x + n
    series = (np.log1p(n / x) + n / (2 * x * z) + n * (x + z) / (12 * x**2 * z**2)
              - (x**-4 - z**-4) / 120 + (x**-6 - z**-6) / 252)
    return np.where(x >= 100, series, digamma(z) - digamma(x))


def expected_precision_sum(a: np.ndarray, b: np.ndarray, c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Σ_{j=1..n} (a + b·(j−1)) / (c + j), elementwise (float64).

    Groups up to ``DIRECT_SUM_MAX`` add their terms (all positive: no cancellation); larger ones
    use the same sum through harmonic numbers, n·b + (a − b·(c + 1))·(H(c + n) − H(c)), whose
    rounding stays within 1e-12 of the sum (relative) even at c ≈ 10⁵."""
    a, b, c, n = (np.asarray(v, dtype=np.float64) for v in (a, b, c, n))
    out = a / (c + 1.0)  # n = 1
    small = np.flatnonzero((n > 1) & (n <= DIRECT_SUM_MAX))
    j = np.arange(DIRECT_SUM_MAX, dtype=np.float64)[None, :]
    for start in range(0, len(small), _DIRECT_ITEMS):
        part = small[start:start + _DIRECT_ITEMS]
        aa, bb, cc, nn = (v[part, None] for v in (a, b, c, n))
        out[part] = np.where(j < nn, (aa + bb * j) / (cc + 1.0 + j), 0.0).sum(1)
    large = np.flatnonzero(n > DIRECT_SUM_MAX)
    if len(large):
        aa, bb, cc, nn = a[large], b[large], c[large], n[large]
        out[large] = nn * bb + (aa - bb * (cc + 1.0)) * harmonic_difference(cc + 1.0, nn)
    return out


def per_query_metrics(counts: torch.Tensor, thresholds: torch.Tensor, r_count: torch.Tensor,
                      n_nonrelevant: torch.Tensor, ties: str = "expected"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, first relevant rank and RP (%) of b queries, each with r_count ≥ 1, from padded
    ``count_below_and_tied`` counts summed over all candidates; ``n_nonrelevant`` = M = N − R."""
    r_max = thresholds.shape[1]
    valid = torch.arange(r_max)[None, :] < r_count[:, None]
    row, k = torch.nonzero(valid, as_tuple=True)
    start, size = (x[valid] for x in tie_groups(thresholds, r_count))
    flat = RelevantCounts(row.numpy(), k.numpy(), start.numpy(), size.numpy(), counts[0][valid].numpy(),
                          counts[1][valid].numpy(), r_count.numpy())
    return relevant_metrics(flat, n_nonrelevant.numpy(), ties)


def relevant_metrics(counts: RelevantCounts, n_nonrelevant: np.ndarray, ties: str = "expected"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, first relevant rank and RP (%) per query (see the module doc for the tie rules)."""
    ties = check_ties(ties)
    k, start, size, below, tied = (np.asarray(getattr(counts, name), dtype=np.float64)
                                   for name in ("k", "start", "size", "below", "tied"))
    if ties == "pessimistic":  # relevant after every non-relevant it ties with
        position = k + 1.0 + below + tied
        precision = (k + 1.0) / position
        first_rank, above = position, below + tied
    else:
        c, n = start + below, size + tied
        slope = np.where(n > 1, (size - 1.0) / np.maximum(n - 1.0, 1.0), 0.0)
        precision = expected_precision_sum(start + 1.0, slope, c, n) / n  # this item's 1/r share
        first_rank, above = c + (n + 1.0) / (size + 1.0), below + tied / 2.0
    b = len(counts.r_count)
    row = np.asarray(counts.row, dtype=np.int64)
    r = np.asarray(counts.r_count, dtype=np.float64)
    ap = np.bincount(row, weights=precision, minlength=b) / r
    m = np.maximum(np.asarray(n_nonrelevant, dtype=np.float64), 1.0)
    rp = np.bincount(row, weights=above, minlength=b) / r / m * 100.0
    first = np.zeros(b, dtype=np.float64)
    is_first = np.asarray(counts.k) == 0
    first[row[is_first]] = first_rank[is_first]
    return ap, first, rp


# ---------------------------------------------------------------- accumulation by row blocks


class RankAccumulator:
    """Per-query metrics from whole distance rows given block by block (any order, any size)."""

    def __init__(self, query_cliques: Sequence[str], candidate_cliques: Sequence[str],
                 query_keys: Sequence[str] | None = None, candidate_keys: Sequence[str] | None = None,
                 diagonal_is_self: bool = False, ties: str = "expected") -> None:
        self.ties = check_ties(ties)
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
        block = distances.numpy() if isinstance(distances, torch.Tensor) else np.asarray(distances)
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
            block = block[keep]
            qidx = qidx[keep]
            rel = [r for r, k in zip(rel, keep) if k]
        if block.dtype not in (np.float32, np.float64):
            block = block.astype(np.float32 if block.dtype == np.float16 else np.float64)
        if np.isnan(block).any():
            block = np.where(np.isnan(block), np.inf, block)
        self._rank(qidx, count_rows(block, rel, self.self_index[qidx]))

    def add_known_rows(self, query_index: Sequence[int] | np.ndarray, values: Sequence[np.ndarray],
                       columns: Sequence[np.ndarray]) -> None:
        """Rank queries whose rows are given only at ``columns`` (each sorted, holding every
        relevant candidate and the query's own entry). The caller guarantees that every other
        candidate is farther than all the query's relevant candidates: it then counts for no
        threshold, and the metrics equal those of the whole rows (M still counts it)."""
        qidx = np.asarray(query_index, dtype=np.int64)
        keep, rel_pos, own_pos, rows = [], [], [], []
        for q, d, cols in zip(qidx, values, columns):
            own = int(self.self_index[q])
            rel = self.relevant[q] if own < 0 else self.relevant[q][self.relevant[q] != own]
            if not len(rel):
                self.n_skipped += 1
                continue
            at = np.searchsorted(cols, rel)
            if (at >= len(cols)).any() or (cols[np.minimum(at, len(cols) - 1)] != rel).any():
                raise ValueError(f"query {q}: the given columns lack relevant candidates")
            o = -1
            if own >= 0:
                o = int(np.searchsorted(cols, own))
                if o >= len(cols) or cols[o] != own:
                    raise ValueError(f"query {q}: the given columns lack the query's own entry")
            d = np.asarray(d)
            keep.append(q)
            rel_pos.append(at)
            own_pos.append(o)
            rows.append(np.where(np.isnan(d), np.inf, d) if np.isnan(d).any() else d)
        if keep:
            self._rank(np.array(keep, dtype=np.int64), count_rows(rows, rel_pos, np.array(own_pos)))

    def _rank(self, qidx: np.ndarray, counts: RelevantCounts) -> None:
        n_nonrelevant = self.n_candidates - counts.r_count  # M = N − R: the own entry is one of them
        ap, first, rp = relevant_metrics(counts, n_nonrelevant, self.ties)
        self._parts.append((qidx, ap, first, rp))

    def per_query(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(query_index, ap, first_rank, rp) of the queries added so far."""
        if not self._parts:
            z = np.zeros(0)
            return np.zeros(0, np.int64), z, z, z
        return tuple(np.concatenate(p) for p in zip(*self._parts))  # type: ignore[return-value]

    def result(self) -> Metrics:
        qidx, ap, first, rp = self.per_query()
        return Metrics.from_per_query(ap, first, rp, qidx, self.n_skipped, self.ties)


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
                      candidate_keys: Sequence[str] | None = None, ties: str = "expected") -> Metrics:
    """MAP, MR1, ARP (and intervals) of a query × candidate distance matrix (see module doc)."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or distances.shape != (len(query_cliques), len(candidate_cliques)):
        raise ValueError(f"distance matrix has shape {distances.shape}, expected "
                         f"({len(query_cliques)}, {len(candidate_cliques)}) from the cliques")
    square = distances.shape[0] == distances.shape[1]
    acc = RankAccumulator(query_cliques, candidate_cliques, query_keys, candidate_keys,
                          diagonal_is_self=square and query_keys is None, ties=ties)
    step = max(1, BLOCK_ELEMENTS // max(1, distances.shape[1]))
    for start in range(0, distances.shape[0], step):
        stop = min(start + step, distances.shape[0])
        acc.add(np.arange(start, stop), np.ascontiguousarray(distances[start:stop]))
    return acc.result()

