"""Metrics against plain per-query references (tests/helpers/metrics_reference.py), literal averages over
all permutations of tied candidates, and hand-computed cases."""

from __future__ import annotations

import math
from fractions import Fraction

import helpers.metrics_reference as ref
import numpy as np
import pytest

from wealy_cli.core.errors import UserError
from wealy_cli.ranking.metrics import (
    DIRECT_SUM_MAX,
    Metrics,
    RankAccumulator,
    comp,
    expected_precision_sum,
    harmonic_difference,
    retrieval_metrics,
)


def random_cliques(rng, n, max_size=50, min_size=2):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(min_size, max_size + 1)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:  # fold a too-small last clique into the previous one
        last = sizes.pop()
        sizes[-1] += last
    labels = np.repeat([f"c{i}" for i in range(len(sizes))], sizes)
    return list(rng.permutation(labels))


def unbiased_ci(x):
    x = np.asarray(x, dtype=np.float64)
    return 1.96 * math.sqrt(((x - x.mean()) ** 2).sum() / (len(x) - 1)) / math.sqrt(len(x))


def assert_matches(m: Metrics, want, ties="expected"):
    ap, first, rp = want
    assert m.n_queries == len(ap) and m.ties == ties and m.to_dict()["ties"] == ties
    np.testing.assert_allclose(m.ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.first_rank, first, rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.rp, rp, rtol=0, atol=1e-9)
    assert m.map == pytest.approx(ap.mean(), abs=1e-12)
    assert m.mr1 == pytest.approx(first.mean(), abs=1e-9)
    assert m.arp == pytest.approx(rp.mean(), abs=1e-9)
    assert m.map_ci == pytest.approx(unbiased_ci(ap), abs=1e-12)
    assert m.mr1_ci == pytest.approx(unbiased_ci(first), abs=1e-9)
    assert m.arp_ci == pytest.approx(unbiased_ci(rp), abs=1e-9)


# ---------------------------------------------------------------- hand-computed


def test_hand_computed_square_without_ties():
    d = np.array([[0, .5, .1, .9],
                  [.5, 0, .6, .7],
                  [.1, .6, 0, .2],
                  [.9, .7, .2, 0]])
    for ties in ("expected", "pessimistic"):  # no ties: both rules agree
        m = retrieval_metrics(d, list("aabb"), list("aabb"), ties=ties)
        np.testing.assert_allclose(m.ap, [.5, 1, .5, 1])
        np.testing.assert_array_equal(m.first_rank, [2, 1, 2, 1])
        # one non-relevant above out of M = N − R = 4 − 1 = 3 (the query's own entry is one of them)
        np.testing.assert_allclose(m.rp, [100 / 3, 0, 100 / 3, 0])
        assert (m.map, m.mr1, m.arp) == pytest.approx((0.75, 1.5, 50 / 3))
        # unbiased std of (.5, 1, .5, 1): √(4 · .25² / 3) = √(1/12) (population std: .25)
        assert m.map_ci == pytest.approx(1.96 * math.sqrt(1 / 12) / 2)
        assert comp(m) == pytest.approx(math.sqrt(1 / 6 * 0.25))


def test_hand_computed_tie_groups():
    # query q/0 with its own entry; relevant R at .1 .3 .5, non-relevant N at .1 .3 .3 .5
    keys = ["q/0", "q/1", "x/1", "q/2", "x/2", "y/1", "y/2", "q/3"]
    dist = np.array([[0.0, .1, .1, .3, .3, .3, .5, .5]])
    cliques = [k.split("/")[0] for k in keys]
    e = retrieval_metrics(dist, ["q"], cliques, ["q/0"], keys)
    # groups (n, r, c, t): .1 (2, 1, 0, 0), .3 (3, 1, 2, 1), .5 (2, 1, 5, 2)
    ap = (Fraction(1, 2) * (Fraction(1, 1) + Fraction(1, 2))
          + Fraction(1, 3) * 2 * (Fraction(1, 3) + Fraction(1, 4) + Fraction(1, 5))
          + Fraction(1, 2) * 3 * (Fraction(1, 6) + Fraction(1, 7))) / 3
    assert e.ap[0] == pytest.approx(float(ap), abs=1e-15)
    assert e.first_rank[0] == 1.5  # 0 + (2 + 1) / (1 + 1)
    # non-relevant above: .5, 1 + 1, 3 + .5 out of M = 8 − 3 = 5
    assert e.rp[0] == pytest.approx(100 * (0.5 + 2 + 3.5) / 3 / 5)
    p = retrieval_metrics(dist, ["q"], cliques, ["q/0"], keys, ties="pessimistic")
    # N R N N R N R → relevant at 2, 5, 7 with 1, 3, 4 non-relevant above
    assert p.ap[0] == pytest.approx((1 / 2 + 2 / 5 + 3 / 7) / 3, abs=1e-15)
    assert p.first_rank[0] == 2 and p.rp[0] == pytest.approx(100 * 8 / 3 / 5)
    rel = [c == "q" and k != "q/0" for k, c in zip(keys, cliques)]
    assert (e.ap[0], e.first_rank[0], e.rp[0]) == pytest.approx(ref.expected_by_permutations(dist[0], rel, 0))
    assert (p.ap[0], p.first_rank[0], p.rp[0]) == pytest.approx(ref.pessimistic(dist[0], rel, 0))


def test_constant_matrix_scores_exactly_chance():
    rng = np.random.default_rng(0)
    cliques = random_cliques(rng, 40, 9)
    n_all = len(cliques)
    m = retrieval_metrics(np.full((n_all, n_all), 0.7, np.float32), cliques, cliques)
    n = n_all - 1  # candidates other than the query
    r = np.array([cliques.count(c) - 1 for c in cliques], dtype=np.float64)
    harmonic = sum(1 / j for j in range(1, n + 1))
    # a uniformly random order of n candidates, r relevant
    np.testing.assert_allclose(m.ap, (r - 1) / (n - 1) + (n - r) / (n * (n - 1)) * harmonic, atol=1e-14)
    np.testing.assert_allclose(m.first_rank, (n + 1) / (r + 1), atol=1e-12)
    np.testing.assert_allclose(m.rp, 100 * (n - r) / 2 / (n_all - r), atol=1e-12)
    p = retrieval_metrics(np.full((n_all, n_all), 0.7, np.float32), cliques, cliques, ties="pessimistic")
    np.testing.assert_allclose(p.first_rank, n - r + 1)  # below every non-relevant
    np.testing.assert_allclose(p.rp, 100 * (n - r) / (n_all - r))


def test_arp_denominator_counts_the_query_itself():
    # 2 relevant, 3 non-relevant other than the query: N = 6, R = 2 → M = 4 (not N − 1 − R = 3)
    d = np.array([[0.0, .4, .1, .2, .3, .5]])
    cliques = ["a", "a", "b", "b", "c", "a"]
    m = retrieval_metrics(d, ["a"], cliques, ["a/0"], [f"{c}/{j}" for j, c in enumerate(cliques)])
    # relevant at .4 (3 non-relevant above) and .5 (3 above)
    assert m.rp[0] == pytest.approx(100 * 3 / 4)
    # without the query among the candidates, N = 5 and M = 3
    m = retrieval_metrics(d[:, 1:], ["a"], cliques[1:])
    assert m.rp[0] == pytest.approx(100.0)


def test_interval_uses_the_unbiased_std():
    d = np.array([[0, .2, .1], [.2, 0, .3], [.1, .3, 0]])
    m = retrieval_metrics(d, list("aaa"), list("aaa"))  # AP 1 everywhere: std 0
    assert m.map_ci == 0.0
    rng = np.random.default_rng(3)
    cliques = random_cliques(rng, 30, 5)
    m = retrieval_metrics(rng.random((30, 30)), cliques, cliques)
    assert m.map_ci == pytest.approx(1.96 * np.std(m.ap, ddof=1) / math.sqrt(30), abs=1e-15)
    assert m.map_ci > 1.96 * np.std(m.ap) / math.sqrt(30)
    one = retrieval_metrics(np.array([[0, .1], [.1, 0]]), ["a", "a"], ["a", "b"])  # one evaluated query
    assert one.n_queries == 1 and math.isnan(one.map_ci)


# ---------------------------------------------------------------- permutations and references


@pytest.mark.parametrize("seed", range(4))
def test_small_matrices_equal_the_average_over_all_tie_orders(seed):
    rng = np.random.default_rng(seed)
    cliques = ["a", "a", "a", "b", "b", "c", "c", "d"]
    d = rng.integers(0, 3, (8, 8)).astype(np.float32)  # three levels: big tie groups
    m = retrieval_metrics(d, cliques, cliques)
    assert_matches(m, ref.per_query(ref.expected_by_permutations, d, cliques, cliques, np.arange(8)))


@pytest.mark.parametrize("n,levels,seed", [(50, 3, 1), (400, 10, 2), (300, 2, 3), (600, 0, 4)])
@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_random_square_with_ties_matches_reference(n, levels, seed, ties):
    rng = np.random.default_rng(seed)
    cliques = random_cliques(rng, n)
    d = rng.random((n, n))
    if levels:
        d = np.floor(d * levels) / levels  # many exact ties; 2 levels: groups far above 64
    d = d.astype(np.float32)
    m = retrieval_metrics(d, cliques, cliques, ties=ties)
    reference = ref.expected_by_groups if ties == "expected" else ref.pessimistic
    assert_matches(m, ref.per_query(reference, d, cliques, cliques, np.arange(n)), ties)


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_cliques_of_two_with_ties(ties):
    rng = np.random.default_rng(8)
    cliques = list(rng.permutation(np.repeat([f"c{i}" for i in range(40)], 2)))
    d = np.round(rng.random((80, 80)), 1)
    m = retrieval_metrics(d, cliques, cliques, ties=ties)
    reference = ref.expected_by_groups if ties == "expected" else ref.pessimistic
    assert_matches(m, ref.per_query(reference, d, cliques, cliques, np.arange(80)), ties)


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_random_rectangular_with_keys_and_nan_matches_reference(ties):
    rng = np.random.default_rng(5)
    n_c = 500
    cc = random_cliques(rng, n_c, 30)
    ck = [f"{c}/{j}" for j, c in enumerate(cc)]
    pick = rng.choice(n_c, 200, replace=False)
    qk = [ck[j] for j in pick[:160]] + [f"{cc[j]}/extra{j}" for j in pick[160:]]  # 40 not candidates
    qc = [k.split("/")[0] for k in qk]
    d = np.round(rng.random((200, n_c)), 2)
    d[rng.random(d.shape) < 0.05] = np.nan  # NaN = +inf: ties at the end too
    position = {k: j for j, k in enumerate(ck)}
    own = [position.get(k, -1) for k in qk]
    m = retrieval_metrics(d, qc, cc, qk, ck, ties=ties)
    reference = ref.expected_by_groups if ties == "expected" else ref.pessimistic
    assert_matches(m, ref.per_query(reference, d, qc, cc, own), ties)


def test_own_entry_is_ignored_wherever_it_is():
    rng = np.random.default_rng(0)
    qc = random_cliques(rng, 60, 6)
    d = np.round(rng.random((60, 60)), 1)
    a = retrieval_metrics(np.where(np.eye(60, dtype=bool), -5.0, d), qc, qc)
    b = retrieval_metrics(np.where(np.eye(60, dtype=bool), 5.0, d), qc, qc)
    c = retrieval_metrics(np.where(np.eye(60, dtype=bool), 0.5, d), qc, qc)  # tied with others
    for other in (b, c):
        np.testing.assert_array_equal(a.ap, other.ap)
        np.testing.assert_array_equal(a.rp, other.rp)


def test_skipped_queries_are_counted():
    d = np.array([[.1, .2, .3], [.3, .2, .1]])
    m = retrieval_metrics(d, ["a", "z"], ["a", "b", "c"])  # not square: no own entry
    assert m.n_queries == 1 and m.n_skipped == 1
    assert m.ap[0] == 1.0 and m.query_index.tolist() == [0]


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_blocks_in_any_order_give_the_same_result(ties):
    rng = np.random.default_rng(6)
    cliques = random_cliques(rng, 300, 20)
    d = np.round(rng.random((300, 300)), 1).astype(np.float32)
    acc = RankAccumulator(cliques, cliques, diagonal_is_self=True, ties=ties)
    for part in np.array_split(rng.permutation(300), 7):
        acc.add(part, d[part])
    whole = retrieval_metrics(d, cliques, cliques, ties=ties)
    np.testing.assert_array_equal(acc.result().ap, whole.ap)
    reference = ref.expected_by_groups if ties == "expected" else ref.pessimistic
    assert_matches(acc.result(), ref.per_query(reference, d, cliques, cliques, np.arange(300)), ties)


def test_candidate_order_does_not_change_expected_metrics():
    rng = np.random.default_rng(9)
    cliques = random_cliques(rng, 200, 12)
    d = np.round(rng.random((200, 200)), 1)
    perm = rng.permutation(200)
    keys = [f"{c}/{j}" for j, c in enumerate(cliques)]
    a = retrieval_metrics(d, cliques, cliques, keys, keys)
    b = retrieval_metrics(d[:, perm], cliques, [cliques[j] for j in perm], keys, [keys[j] for j in perm])
    np.testing.assert_allclose(a.ap, b.ap, atol=1e-15)
    np.testing.assert_allclose(a.rp, b.rp, atol=1e-12)


# ---------------------------------------------------------------- the sum behind expected AP


@pytest.mark.parametrize("c", [0, 7, 1000, 100_000])
@pytest.mark.parametrize("n", [2, DIRECT_SUM_MAX, DIRECT_SUM_MAX + 1, 500])
def test_expected_precision_sum_against_exact_fractions(c, n):
    cases = [(r, t) for r in (1, 2, n) for t in (0, min(c, 3))]
    a = np.array([t + 1.0 for _, t in cases])
    b = np.array([(r - 1) / (n - 1) for r, _ in cases])
    got = expected_precision_sum(a, b, np.full_like(a, c), np.full_like(a, n))
    for (r, t), value in zip(cases, got.tolist()):
        exact = sum((Fraction(t + 1) + Fraction((j - 1) * (r - 1), n - 1)) / (c + j) for j in range(1, n + 1))
        # the group adds this sum · (r/n) / R to an AP, R ≥ r: that share is off by < 1e-12
        assert abs(value - float(exact)) / n < 1e-12
        assert value == pytest.approx(float(exact), rel=1e-12)


def test_harmonic_difference_against_exact_fractions():
    for x, n in [(1, 65), (50, 70), (99, 100), (100, 65), (101, 1000), (12_345, 80), (100_000, 100_000)]:
        got = float(harmonic_difference(np.array([float(x)]), np.array([float(n)]))[0])
        exact = sum(Fraction(1, x + i) for i in range(n))
        assert got == pytest.approx(float(exact), rel=3e-15)


def test_unknown_tie_rule_is_a_user_error():
    with pytest.raises(UserError, match="--ties"):
        retrieval_metrics(np.zeros((2, 2)), ["a", "a"], ["a", "a"], ties="optimistic")


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((3, 4)), list("aab"), list("aab"))
