"""Straightforward per-query references for MAP/MR1/ARP, written independently of wealy's code.

One query at a time, on a dense row: ``rel`` marks the relevant candidates, ``own`` the query's
own entry (or -1). The own entry is left out of the ranking and counted among the non-relevant
items of ARP's denominator (M = N − R, as sony/clews ``rank_percentile``, where the query stays
in the list at +inf). NaN distances count as +inf.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _candidates(d_row, rel, own):
    cand = [j for j in range(len(d_row)) if j != own]
    d = {j: (math.inf if np.isnan(d_row[j]) else float(d_row[j])) for j in cand}
    return cand, d, int(sum(bool(rel[j]) for j in cand)), len(d_row)


def _score_order(order, rel, r_total, m_total):
    """AP, first relevant rank, RP (%) of one complete ranking."""
    hits, precisions, above, nonrel_seen, first = 0, [], [], 0, None
    for pos, j in enumerate(order, 1):
        if rel[j]:
            hits += 1
            precisions.append(hits / pos)
            above.append(nonrel_seen)
            first = first or pos
        else:
            nonrel_seen += 1
    return sum(precisions) / r_total, first, 100 * sum(above) / r_total / max(m_total, 1)


def pessimistic(d_row, rel, own=-1):
    """Sort by (distance, relevant after non-relevant, index) and score that one order."""
    cand, d, r_total, n = _candidates(d_row, rel, own)
    order = sorted(cand, key=lambda j: (d[j], bool(rel[j]), j))
    return _score_order(order, rel, r_total, n - r_total)


def expected_by_groups(d_row, rel, own=-1):
    """Walk the tie groups in distance order; expected values over random orders within a group,
    each term summed literally (no closed form)."""
    cand, d, r_total, n_all = _candidates(d_row, rel, own)
    c = t = 0
    ap_sum, first, above = 0.0, None, []
    for value in sorted(set(d.values())):
        group = [j for j in cand if d[j] == value]
        n, r = len(group), sum(bool(rel[j]) for j in group)
        for j in range(1, n + 1):
            inside = (j - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
            ap_sum += (r / n) * (t + 1 + inside) / (c + j)
        if r and first is None:
            first = c + (n + 1) / (r + 1)
        above += [(c - t) + (n - r) / 2] * r
        c, t = c + n, t + r
    return ap_sum / r_total, first, 100 * sum(above) / r_total / max(n_all - r_total, 1)


def expected_by_permutations(d_row, rel, own=-1):
    """Average of the scores of every permutation of the candidates, each then stably sorted by
    distance: every order of tied candidates, equally likely (small rows only)."""
    cand, d, r_total, n = _candidates(d_row, rel, own)
    scores = [_score_order(sorted(perm, key=lambda j: d[j]), rel, r_total, n - r_total)
              for perm in itertools.permutations(cand)]
    return tuple(float(np.mean(x)) for x in zip(*scores))


def per_query(reference, dist, query_cliques, candidate_cliques, own):
    """Apply a per-query reference to every query with a relevant candidate."""
    out = []
    for i in range(dist.shape[0]):
        rel = [candidate_cliques[j] == query_cliques[i] and j != own[i] for j in range(dist.shape[1])]
        if any(rel):
            out.append(reference(dist[i], rel, own[i]))
    return tuple(np.array(x, dtype=np.float64) for x in zip(*out)) if out else (np.zeros(0),) * 3
