"""Training-free late interaction over Whisper decoder rows (a reference implementation).

For two songs A, B with selected rows, each centred by a mean row ``mu`` and L2-normalised:

    S = A Bᵀ                           cosine of every row pair
    m_A[i] = max_j S[i, j]             best match in B of each row of A
    s(A→B) = agg(m_A, w_A)             agg: weighted mean (w = 1 or IDF of the row's token),
                                       or mean of the best ``top`` fraction of the m_A
    sym(A, B) = mean | max | min of s(A→B), s(B→A), or s(X→Y) with X the song with fewer rows
    distance = 1 − sym

Everything is computed per query song against all rows of the split at once, in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from common import EOT, Song, Split


@dataclass(frozen=True)
class LIOptions:
    rows: str = "text"  # all | generated | text
    centre: str = "train"  # none | train | split (the evaluated split's own mean row)
    sym: str = "mean"  # mean | max | min | shorter | longer
    top: float = 1.0  # fraction of a song's rows (its best matches) that are averaged
    idf: bool = False  # weight rows by the IDF of their token over the training songs

    def label(self) -> str:
        parts = [f"rows={self.rows}", f"centre={self.centre}", f"sym={self.sym}"]
        if self.top < 1:
            parts.append(f"top={self.top:g}")
        if self.idf:
            parts.append("idf")
        return " ".join(parts)


def mean_row(songs: list[Song], rows: str) -> np.ndarray:
    """Mean of the selected rows over all rows of ``songs`` (each row counts once)."""
    total = np.zeros(songs[0].rows.shape[1], np.float64)
    n = 0
    for s in songs:
        r = s.select(rows)
        total += r.sum(0)
        n += len(r)
    return (total / max(n, 1)).astype(np.float32)


def token_idf(songs: list[Song]) -> dict[int, float]:
    """BM25's idf, log(1 + (N − df + 0.5) / (df + 0.5)), of every text token over ``songs``
    (df = number of songs whose text rows contain the token)."""
    df: dict[int, int] = {}
    for s in songs:
        for t in set(s.tokens[s.text_mask].tolist()):
            df[t] = df.get(t, 0) + 1
    n = len(songs)
    return {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}


def unseen_idf(n_songs: int) -> float:
    return math.log(1 + (n_songs + 0.5) / 0.5)


def prepare(songs: list[Song], opts: LIOptions, mu: np.ndarray | None, idf: dict[int, float] | None,
            n_train: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per song: normalised selected rows and row weights."""
    mats, weights = [], []
    for s in songs:
        mask = s.mask(opts.rows)
        r = s.rows[mask]
        if len(r) == 0:  # nothing to match: one zero row (cosine 0 with everything)
            mats.append(np.zeros((1, s.rows.shape[1]), np.float32))
            weights.append(np.ones(1, np.float32))
            continue
        if mu is not None:
            r = r - mu
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-6)
        mats.append(r.astype(np.float32))
        if idf is not None:
            default = unseen_idf(n_train)
            tok = s.tokens[mask]
            # rows of special tokens (only when rows != text) get the smallest idf seen
            low = min(idf.values())
            weights.append(np.array([idf.get(int(t), default) if t < EOT else low for t in tok], np.float32))
        else:
            weights.append(np.ones(len(r), np.float32))
    return mats, weights


def _agg(values: np.ndarray, weights: np.ndarray, top: float) -> np.ndarray:
    """Aggregate along axis 0: weighted mean of the best ``top`` fraction of ``values``."""
    if top >= 1:
        return (values * weights[:, None]).sum(0) / weights.sum()
    k = max(1, int(math.ceil(top * values.shape[0])))
    order = np.argsort(-values, axis=0)[:k]
    v = np.take_along_axis(values, order, axis=0)
    w = weights[order]
    return (v * w).sum(0) / w.sum(0)


def directional_scores(mats: list[np.ndarray], weights: list[np.ndarray], top: float = 1.0
                       ) -> np.ndarray:
    """D[a, b] = s(a→b): aggregate over a's rows of their best cosine among b's rows."""
    n = len(mats)
    allrows = np.concatenate(mats)
    starts = np.cumsum([0] + [len(m) for m in mats])[:-1]
    out = np.zeros((n, n), np.float64)
    for a in range(n):
        sims = mats[a] @ allrows.T  # (n_a, M)
        best_in_b = np.maximum.reduceat(sims, starts, axis=1)  # (n_a, n): m_a against each b
        out[a] = _agg(best_in_b, weights[a], top)
    return out


def symmetrise(directional: np.ndarray, lengths: np.ndarray, how: str) -> np.ndarray:
    d, t = directional, directional.T
    if how == "mean":
        return (d + t) / 2
    if how == "max":
        return np.maximum(d, t)
    if how == "min":
        return np.minimum(d, t)
    shorter_first = lengths[:, None] <= lengths[None, :]  # a is the shorter: use s(a→b)
    if how == "shorter":
        return np.where(shorter_first, d, t)
    if how == "longer":
        return np.where(shorter_first, t, d)
    raise ValueError(how)


def li_distances(split: Split, opts: LIOptions, train: Split | None = None) -> np.ndarray:
    """Late-interaction distance matrix (1 − symmetrised score) of ``split``."""
    if opts.centre == "train":
        mu = mean_row(train.songs, opts.rows)
    elif opts.centre == "split":
        mu = mean_row(split.songs, opts.rows)
    else:
        mu = None
    idf = token_idf(train.songs) if opts.idf else None
    mats, weights = prepare(split.songs, opts, mu, idf, len(train.songs) if train else 0)
    directional = directional_scores(mats, weights, opts.top)
    lengths = np.array([len(m) for m in mats])
    return 1.0 - symmetrise(directional, lengths, opts.sym)


def mean_pooled_distances(split: Split, rows: str = "all") -> np.ndarray:
    """Reference: cosine distance of the songs' mean rows."""
    means = np.stack([s.select(rows).mean(0) if s.mask(rows).any() else np.zeros(s.rows.shape[1]) for s in split.songs])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-9)
    return 1.0 - means @ means.T


def rerank(first: np.ndarray, second: np.ndarray, top_n: int) -> np.ndarray:
    """Re-rank each query's ``top_n`` candidates under ``first`` (own entry excluded) by ``second``;
    the rest keep ``first``'s order below them."""
    out = np.empty_like(second, dtype=np.float64)
    span = float(np.nanmax(second) - np.nanmin(second)) + 1.0
    for i in range(first.shape[0]):
        row = first[i].astype(np.float64).copy()
        row[i] = np.inf
        order = np.argsort(row, kind="stable")
        top = order[:top_n]
        out[i] = 10 * span + row  # below every re-ranked candidate, in first's order
        out[i, top] = second[i, top]
        out[i, i] = np.inf
    return out
