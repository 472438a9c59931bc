"""CLEWS song distances: reductions against brute force, streamed blocks against a dense loop."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.stores import make_store

from wealy_cli.clews.distances import clews_song_distances, reduce_pairs
from wealy_cli.core.errors import UserError
from wealy_cli.core.store import Store


def bpwr_brute_force(d: np.ndarray, k: int) -> float:
    """Over every matching of n = min(k, rows, cols) shingle pairs (no row or column twice),
    the one whose ascending list of distances is lexicographically smallest is what the greedy
    'take the best remaining pair' procedure picks (distinct values); return its mean."""
    n = min(k, *d.shape)
    best = None
    for rows in itertools.combinations(range(d.shape[0]), n):
        for cols in itertools.permutations(range(d.shape[1]), n):
            values = tuple(sorted(d[r, c] for r, c in zip(rows, cols)))
            best = values if best is None or values < best else best
    return float(np.mean(best))


def test_bpwr_matches_brute_force_over_all_matchings():
    rng = np.random.default_rng(0)
    for _ in range(60):
        s1, s2 = rng.integers(1, 6, size=2)
        k = int(rng.integers(1, 6))
        d = rng.random((s1, s2))
        got = float(reduce_pairs(torch.from_numpy(d), f"bpwr-{k}"))
        assert got == pytest.approx(bpwr_brute_force(d, k), abs=1e-12), (d, k)


def test_bpwr_hand_example_differs_from_best_k():
    # greedy takes 0.1 (row 0, col 0), which removes 0.2 (row 0); next best is 0.9
    d = torch.tensor([[0.1, 0.2], [0.8, 0.9]])
    assert float(reduce_pairs(d, "bpwr-2")) == pytest.approx(0.5)
    assert float(reduce_pairs(d, "bpwr-5")) == pytest.approx(0.5)  # k capped at 2 pairs
    assert float(reduce_pairs(d, "bpwr-1")) == pytest.approx(0.1)
    assert float(reduce_pairs(d, "min")) == pytest.approx(0.1)
    assert float(reduce_pairs(d, "mean")) == pytest.approx(0.5)


def test_masked_padding_is_ignored():
    d = torch.tensor([[0.3, 0.0, 0.7], [0.4, 0.0, 0.2], [0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, False, True], [True, False, True], [False, False, False]])
    # the real 2x2 matrix is [[0.3, 0.7], [0.4, 0.2]]
    assert float(reduce_pairs(d, "bpwr-5", valid)) == pytest.approx(0.25)
    assert float(reduce_pairs(d, "min", valid)) == pytest.approx(0.2)
    assert float(reduce_pairs(d, "mean", valid)) == pytest.approx(0.4)


def test_bad_reduction_is_refused():  # the CLI reports it as a --redux error (test_clews_cli)
    with pytest.raises(ValueError, match="expected bpwr-K"):
        reduce_pairs(torch.zeros(2, 2), "bpwr-0")
    with pytest.raises(ValueError, match="expected bpwr-K"):
        reduce_pairs(torch.zeros(2, 2), "median")


def dense_reference(items: dict[str, np.ndarray], qkeys, ckeys, redux: str) -> np.ndarray:
    """Song by song, in float64, with the brute-force bpwr."""
    out = np.zeros((len(qkeys), len(ckeys)))
    for i, q in enumerate(qkeys):
        for j, c in enumerate(ckeys):
            a = items[q].astype(np.float64)
            b = items[c].astype(np.float64)
            d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / a.shape[1]
            if redux == "min":
                out[i, j] = d.min()
            elif redux == "mean":
                out[i, j] = d.mean()
            else:
                out[i, j] = bpwr_brute_force(d, int(redux.split("-")[1]))
    return out


@pytest.mark.parametrize("redux", ["bpwr-2", "bpwr-5", "min", "mean"])
def test_streamed_distances_equal_dense(tmp_path: Path, redux: str):
    rng = np.random.default_rng(1)
    dim = 8
    lengths = [1, 4, 2, 5, 3, 1, 4]
    items = {f"c{i % 3}/v{i}": rng.normal(size=(n, dim)).astype(np.float16) for i, n in enumerate(lengths)}
    store = Store(make_store(tmp_path / "store", items, dim))
    keys = list(items)
    qkeys, ckeys = keys[:5], keys[2:]
    expected = dense_reference(items, qkeys, ckeys, redux)
    for block in (1, 2, 3, 100):
        got = clews_song_distances(store, qkeys, ckeys, redux=redux, block=block)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    streamed = clews_song_distances(store, qkeys, ckeys, redux=redux, block=2, cache_bytes=0)
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-6)
    # all against all: only the upper blocks are computed, then mirrored
    everything = dense_reference(items, keys, keys, redux)
    for block in (1, 3):
        got = clews_song_distances(store, keys, keys, redux=redux, block=block)
        np.testing.assert_allclose(got, everything, rtol=1e-5, atol=1e-6)


def test_unknown_key_is_a_user_error(tmp_path: Path):
    store = Store(make_store(tmp_path / "s", {"a/1": np.ones((2, 4), np.float16)}, 4))
    with pytest.raises(UserError, match="b/9"):
        clews_song_distances(store, ["a/1"], ["b/9"])


def test_distance_matrix_of_a_split(tmp_path: Path):
    from wealy_cli.clews.distances import clews_distance_matrix
    from wealy_cli.core.datasets import load_split
    from wealy_cli.core.store import StoreWriter
    from wealy_cli.ranking.metrics import retrieval_metrics

    rng = np.random.default_rng(2)
    motifs = {c: rng.normal(size=(1, 6)) for c in "abc"}
    items = {}
    for clique in "abc":
        for version, n in (("1", 2), ("2", 3)):
            noise = rng.normal(size=(n, 6))
            noise[0] = motifs[clique]  # every version of a clique shares one shingle exactly
            items[f"{clique}/{version}"] = noise.astype(np.float16)
    items["d/1"] = rng.normal(size=(2, 6)).astype(np.float16)  # a clique of one: dropped by the split
    with StoreWriter(tmp_path / "store", 6, kind="clews") as writer:
        for key, array in items.items():
            writer.add(key, array)
    listing = tmp_path / "split.csv"
    listing.write_text("clique,version,path\n" + "".join(f"{k.split('/')[0]},{k.split('/')[1]},x.mp3\n"
                                                          for k in items))
    split = load_split("csv", "test", listing)
    m = clews_distance_matrix(Store(tmp_path / "store"), split, redux="min", block=2)
    assert m.query_keys == m.candidate_keys == ["a/1", "a/2", "b/1", "b/2", "c/1", "c/2"]
    assert m.query_cliques == ["a", "a", "b", "b", "c", "c"]
    np.testing.assert_allclose(m.distances, dense_reference(items, m.query_keys, m.query_keys, "min"), atol=1e-6)
    metrics = retrieval_metrics(m.distances, m.query_cliques, m.candidate_cliques, m.query_keys, m.candidate_keys)
    assert metrics.map == pytest.approx(1.0)  # the shared shingle puts the other version first
    with pytest.raises(UserError, match="not a CLEWS store"):
        clews_distance_matrix(Store(make_store(tmp_path / "plain", items, 6)), split)
