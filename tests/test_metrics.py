"""Metrics against a plain dense, sort-based reference written here, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wealy_cli.ranking.metrics import Metrics, RankAccumulator, comp, retrieval_metrics


def reference(dist, qc, cc, self_idx):
    """Sort every row by (distance, relevant after non-relevant, index); own entry removed."""
    aps, firsts, rps = [], [], []
    for i in range(dist.shape[0]):
        cand = [j for j in range(dist.shape[1]) if j != self_idx[i]]
        d = np.where(np.isnan(dist[i, cand]), np.inf, dist[i, cand])
        rel = np.array([cc[j] == qc[i] for j in cand])
        if not rel.any():
            continue
        order = np.lexsort((np.array(cand), rel.astype(int), d))  # last key is primary
        ranked = rel[order]
        hits = np.flatnonzero(ranked) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
        firsts.append(hits[0])
        n_nonrel = len(cand) - rel.sum()
        above = hits - np.arange(1, len(hits) + 1)
        rps.append(100 * np.mean(above / n_nonrel) if n_nonrel else 0.0)
    return np.array(aps), np.array(firsts), np.array(rps)


def random_cliques(rng, n, max_size=50):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, max_size + 1)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:  # fold a too-small last clique into the previous one
        sizes[-2] += sizes.pop()
    labels = np.repeat([f"c{i}" for i in range(len(sizes))], sizes)
    return list(rng.permutation(labels))


def assert_matches(m: Metrics, ref):
    ap, first, rp = ref
    assert m.n_queries == len(ap)
    np.testing.assert_allclose(m.ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(m.first_rank, first)
    np.testing.assert_allclose(m.rp, rp, rtol=0, atol=1e-9)
    assert m.map == pytest.approx(ap.mean(), abs=1e-12)
    assert m.mr1 == pytest.approx(first.mean(), abs=1e-12)
    assert m.arp == pytest.approx(rp.mean(), abs=1e-9)
    assert m.map_ci == pytest.approx(1.96 * ap.std() / math.sqrt(len(ap)), abs=1e-12)
    assert m.mr1_ci == pytest.approx(1.96 * first.std() / math.sqrt(len(ap)), abs=1e-9)
    assert m.arp_ci == pytest.approx(1.96 * rp.std() / math.sqrt(len(ap)), abs=1e-9)


def test_hand_computed_square():
    d = np.array([[0, .5, .1, .9],
                  [.5, 0, .6, .7],
                  [.1, .6, 0, .2],
                  [.9, .7, .2, 0]])
    m = retrieval_metrics(d, list("aabb"), list("aabb"))
    np.testing.assert_allclose(m.ap, [.5, 1, .5, 1])
    np.testing.assert_array_equal(m.first_rank, [2, 1, 2, 1])
    np.testing.assert_allclose(m.rp, [50, 0, 50, 0])
    assert (m.map, m.mr1, m.arp) == pytest.approx((0.75, 1.5, 25.0))
    assert m.map_ci == pytest.approx(1.96 * 0.25 / 2)
    assert comp(m) == pytest.approx(math.sqrt(0.25 * 0.25))


def test_hand_computed_three_relevant_with_keys():
    # query q/0 (clique q): relevant at .3 .1 .5, non-relevant at .2 .4 .6 .05, itself at .0
    cand_keys = ["q/1", "q/2", "q/3", "x/1", "x/2", "y/1", "y/2", "q/0"]
    dist = np.array([[.3, .1, .5, .2, .4, .6, .05, 0.0]])
    m = retrieval_metrics(dist, ["q"], [k.split("/")[0] for k in cand_keys], ["q/0"], cand_keys)
    # ranking: .05 N, .1 R, .2 N, .3 R, .4 N, .5 R, .6 N → relevant at 2, 4, 6
    assert m.ap[0] == pytest.approx((1 / 2 + 2 / 4 + 3 / 6) / 3)
    assert m.first_rank[0] == 2
    assert m.rp[0] == pytest.approx(100 * (1 + 2 + 3) / 3 / 4)


def test_constant_matrix_is_pessimistic():
    m = retrieval_metrics(np.ones((4, 4)), list("aabb"), list("aabb"))
    # each query: 1 relevant, 2 non-relevant, all tied → the relevant one is ranked 3rd
    np.testing.assert_allclose(m.ap, 1 / 3)
    np.testing.assert_array_equal(m.first_rank, 3)
    np.testing.assert_allclose(m.rp, 100)


def test_own_entry_is_ignored_wherever_it_is():
    rng = np.random.default_rng(0)
    qc = random_cliques(rng, 60, 6)
    d = rng.random((60, 60))
    a = retrieval_metrics(np.where(np.eye(60, dtype=bool), -5.0, d), qc, qc)
    b = retrieval_metrics(np.where(np.eye(60, dtype=bool), 5.0, d), qc, qc)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.rp, b.rp)


def test_skipped_queries_are_counted():
    d = np.array([[.1, .2, .3], [.3, .2, .1]])
    m = retrieval_metrics(d, ["a", "z"], ["a", "b", "c"])  # not square: no own entry
    assert m.n_queries == 1 and m.n_skipped == 1
    assert m.ap[0] == 1.0 and m.query_index.tolist() == [0]


@pytest.mark.parametrize("n,levels,seed", [(50, 3, 1), (400, 10, 2), (2000, 50, 3), (2000, 0, 4)])
def test_random_square_with_ties_matches_reference(n, levels, seed):
    rng = np.random.default_rng(seed)
    cliques = random_cliques(rng, n)
    d = rng.random((n, n))
    if levels:
        d = np.floor(d * levels) / levels  # many exact ties
    m = retrieval_metrics(d.astype(np.float32), cliques, cliques)
    assert_matches(m, reference(d.astype(np.float32), cliques, cliques, np.arange(n)))


def test_random_rectangular_with_keys_and_nan_matches_reference():
    rng = np.random.default_rng(5)
    n_c = 700
    cc = random_cliques(rng, n_c, 30)
    ck = [f"{c}/{j}" for j, c in enumerate(cc)]
    pick = rng.choice(n_c, 250, replace=False)
    qk = [ck[j] for j in pick[:200]] + [f"{cc[j]}/extra{j}" for j in pick[200:]]  # 50 not candidates
    qc = [k.split("/")[0] for k in qk]
    d = np.round(rng.random((250, n_c)), 2)
    d[rng.random(d.shape) < 0.01] = np.nan
    position = {k: j for j, k in enumerate(ck)}
    self_idx = [position.get(k, -1) for k in qk]
    m = retrieval_metrics(d, qc, cc, qk, ck)
    assert_matches(m, reference(d, qc, cc, self_idx))


def test_blocks_in_any_order_give_the_same_result():
    rng = np.random.default_rng(6)
    cliques = random_cliques(rng, 300, 20)
    d = np.round(rng.random((300, 300)), 1).astype(np.float32)
    acc = RankAccumulator(cliques, cliques, diagonal_is_self=True)
    for part in np.array_split(rng.permutation(300), 7):
        acc.add(part, d[part])
    assert_matches(acc.result(), reference(d, cliques, cliques, np.arange(300)))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((3, 4)), list("aab"), list("aab"))
