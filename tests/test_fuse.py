"""Fusion: alignment on keys, weights, normalisation, and the real `wealy fuse` CLI."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
from helpers.cli import run_wealy

from wealy_cli.core.errors import UserError
from wealy_cli.ranking.fusion import (
    align,
    best_row,
    candidates_that_matter,
    combine,
    fuse_grid,
    fuse_paths,
    normalize,
    own_entries,
    plan_alignment,
    write_fused,
)
from wealy_cli.ranking.matrixfile import DistanceMatrix, open_rows, read_matrix, to_original_layout, write_matrix
from wealy_cli.ranking.metrics import retrieval_metrics
from wealy_cli.ranking.options import parse_alphas


def _brute_force_map(d: np.ndarray, cliques: list[str]) -> float:
    """Mean AP by sorting each row (self excluded; ties: relevant after non-relevant, by index)."""
    aps = []
    for i in range(len(cliques)):
        order = sorted((j for j in range(len(cliques)) if j != i),
                       key=lambda j: (d[i, j], cliques[j] == cliques[i], j))
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if cliques[j] == cliques[i]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return float(np.mean(aps))


def _pair(n_cliques: int = 6, per: int = 3, seed: int = 0) -> tuple[DistanceMatrix, DistanceMatrix]:
    """Two noisy square matrices over the same versions: m1 (audio-like), m2 (lyrics-like)."""
    rng = np.random.default_rng(seed)
    cliques = [f"c{c}" for c in range(n_cliques) for _ in range(per)]
    keys = [f"{c}/v{i}" for i, c in enumerate(cliques)]
    same = np.array([[a == b for b in cliques] for a in cliques])
    m1 = np.where(same, 0.5, 1.0) + rng.random((len(keys),) * 2) * 0.9
    m2 = np.where(same, 0.3, 0.8) + rng.random((len(keys),) * 2) * 0.8
    return DistanceMatrix.square(m1, keys, cliques), DistanceMatrix.square(m2, keys, cliques)


def _permuted(m: DistanceMatrix, seed: int) -> DistanceMatrix:
    rng = np.random.default_rng(seed)
    r, c = rng.permutation(m.shape[0]), rng.permutation(m.shape[1])
    return DistanceMatrix(m.distances[np.ix_(r, c)], [m.query_keys[i] for i in r], [m.candidate_keys[j] for j in c],
                          [m.query_cliques[i] for i in r], [m.candidate_cliques[j] for j in c])


def test_parse_alphas():
    assert parse_alphas("0:2:0.1") == [round(0.1 * i, 12) for i in range(21)]
    assert parse_alphas("0:1:0.3") == [0.0, 0.3, 0.6, 0.9]
    assert parse_alphas("0, 0.5,1,0.5") == [0.0, 0.5, 1.0]
    assert parse_alphas([0, 1.5, 1.5]) == [0.0, 1.5]  # a YAML list
    for bad in ("", "a,b", "0:1", "0:1:-0.1", "1:0:0.1", "0;1", "-0.5,1", [], ["nan"]):
        with pytest.raises(ValueError):
            parse_alphas(bad)


@pytest.mark.parametrize("method", ["none", "zscore", "rank"])
def test_permuted_inputs_fuse_like_aligned_ones(method):
    m1, m2 = _pair()
    alphas = [0.0, 0.5, 1.0, 2.0]
    aligned = fuse_grid(align([m1, m2], ["a", "b"]), alphas, method)
    shuffled = fuse_grid(align([_permuted(m1, 1), _permuted(m2, 2)], ["a", "b"]), alphas, method)
    for x, y in zip(aligned, shuffled):
        assert x.weights == y.weights
        for key in ("map", "mr1", "arp"):
            assert x.metrics[key] == pytest.approx(y.metrics[key], abs=1e-12)


def test_alpha_zero_is_m1_and_alpha_one_is_the_sum():
    m1, m2 = _pair()
    rows = fuse_grid(align([m1, m2], ["a", "b"]), [0.0, 1.0])
    direct = retrieval_metrics(m1.distances, m1.query_cliques, m1.candidate_cliques, m1.query_keys, m1.candidate_keys)
    assert rows[0].metrics == direct.to_dict()
    assert rows[0].metrics["map"] == pytest.approx(_brute_force_map(m1.distances, m1.query_cliques), abs=1e-12)
    summed = m1.distances.astype(np.float64) + m2.distances
    assert rows[1].metrics["map"] == pytest.approx(_brute_force_map(summed, m1.query_cliques), abs=1e-12)
    assert rows[1].metrics["map"] > rows[0].metrics["map"]  # the lyrics-like matrix helps


def test_alpha_zero_ignores_infinite_entries_of_m2():
    m1, m2 = _pair()
    m2.distances[0, :] = np.inf
    rows = fuse_grid(align([m1, m2], ["a", "b"]), [0.0])
    assert rows[0].metrics["map"] == pytest.approx(_brute_force_map(m1.distances, m1.query_cliques), abs=1e-12)


def test_three_inputs_search_every_weight_pair():
    m1, m2 = _pair(seed=3)
    _, m3 = _pair(seed=4)
    rows = fuse_grid(align([m1, m2, m3], ["a", "b", "c"]), [0.0, 0.5, 1.0])
    assert [r.weights for r in rows] == [(a, b) for a in (0.0, 0.5, 1.0) for b in (0.0, 0.5, 1.0)]
    d = m1.distances.astype(np.float64) + 0.5 * m2.distances + 1.0 * m3.distances
    assert rows[5].metrics["map"] == pytest.approx(_brute_force_map(d, m1.query_cliques), abs=1e-12)
    assert rows[best_row(rows)].metrics["map"] == max(r.metrics["map"] for r in rows)


def test_alignment_reports_losses_and_refuses_bad_inputs():
    m1, m2 = _pair()
    keep = list(range(2, m2.shape[0]))  # m2 lacks the first two versions
    small = DistanceMatrix(m2.distances[np.ix_(keep, keep)], [m2.query_keys[i] for i in keep],
                           [m2.candidate_keys[i] for i in keep], [m2.query_cliques[i] for i in keep],
                           [m2.candidate_cliques[i] for i in keep])
    aligned = align([m1, small], ["a", "b"])
    assert aligned.query_keys == m1.query_keys[2:]
    assert aligned.report[0]["queries lost"] == 2 and aligned.report[1]["queries lost"] == 0
    np.testing.assert_array_equal(aligned.distances[0], m1.distances[2:, 2:])
    other = DistanceMatrix.square(np.zeros((2, 2)), ["x/1", "x/2"], ["x", "x"])
    with pytest.raises(UserError, match="share no query versions"):
        align([m1, other], ["a", "b"])
    relabelled = DistanceMatrix(m2.distances, m2.query_keys, m2.candidate_keys,
                                ["zz"] + m2.query_cliques[1:], m2.candidate_cliques)
    with pytest.raises(UserError, match="disagree on the clique of 1 shared query"):
        align([m1, relabelled], ["a", "b"])


def test_normalizations():
    d = np.array([[0.0, 2.0, 4.0], [6.0, np.nan, 8.0]])
    z = normalize(d, "zscore")
    finite = np.array([0, 2, 4, 6, 8.0])
    np.testing.assert_allclose(z[np.isfinite(z)], (finite - finite.mean()) / finite.std())
    assert np.isinf(z[1, 1])
    r = normalize(d, "rank")
    np.testing.assert_allclose(r[np.isfinite(r)], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(normalize(d, "none")[0], d[0])
    # z-scoring makes fusion independent of a matrix's scale and offset
    m1, m2 = _pair()
    scaled = DistanceMatrix(m2.distances * 50 + 7, m2.query_keys, m2.candidate_keys, m2.query_cliques,
                            m2.candidate_cliques)
    a = fuse_grid(align([m1, m2], ["a", "b"]), [0.5, 1.0], "zscore")
    b = fuse_grid(align([m1, scaled], ["a", "b"]), [0.5, 1.0], "zscore")
    assert [x.metrics["map"] for x in a] == pytest.approx([x.metrics["map"] for x in b], abs=1e-9)


def test_cli_fuse_original_pickle_with_npz(tmp_path):
    """An original-layout pickle (shuffled references) fused with a wealy .npz through the real CLI."""
    m1, m2 = _pair()
    pkl = tmp_path / "clews.pkl"
    original = to_original_layout(_permuted(m1, 5))
    original["query_references"].reverse()  # references need not be in row order
    pkl.write_bytes(pickle.dumps(original))
    npz = write_matrix(tmp_path / "wealy.npz", m2)
    out = tmp_path / "fusion"
    result = run_wealy("fuse", pkl, npz, "--alphas", "0:1:0.5", "-o", out, "--save-fused")
    assert result.returncode == 0, result.stderr
    with open(out / "fusion_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["weight_wealy"] for r in rows] == ["0", "0.5", "1"]
    expected = [_brute_force_map(m1.distances.astype(np.float64) + a * m2.distances, m1.query_cliques)
                for a in (0.0, 0.5, 1.0)]
    assert [float(r["map"]) for r in rows] == pytest.approx(expected, abs=1e-9)
    assert sum(int(r["best"]) for r in rows) == 1 and int(rows[int(np.argmax(expected))]["best"]) == 1
    assert (out / "fusion_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fused = read_matrix(out / "fused_best.npz")
    assert set(fused.query_keys) == set(m1.query_keys)
    assert "★" in result.stdout and (out / "settings.yaml").is_file()


@pytest.mark.parametrize("alphas", ["0:2", "0,x,1"])
def test_cli_malformed_alphas_exit_code_2(tmp_path, alphas):
    m1, m2 = _pair()
    a, b = write_matrix(tmp_path / "a.npz", m1), write_matrix(tmp_path / "b.h5", m2)
    result = run_wealy("fuse", a, b, "--alphas", alphas, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "--alphas" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "fusion_results.csv").exists()


# ---------------------------------------------------------------- files read by row blocks


def _dense_fusion_maps(m1, m2, alphas, method, ties="expected"):
    """The whole-matrix computation: align in memory, normalise, combine, rank."""
    aligned = align([m1, m2], ["a", "b"])
    own = own_entries(aligned.query_keys, aligned.candidate_keys)
    normed = [normalize(d, method, own) for d in aligned.distances]
    return [retrieval_metrics(combine(normed, [w]), aligned.query_cliques, aligned.candidate_cliques,
                              aligned.query_keys, aligned.candidate_keys, ties=ties).to_dict() for w in alphas]


@pytest.mark.parametrize("method", ["none", "zscore", "rank"])
def test_fuse_over_h5_by_row_blocks_equals_npz_and_the_dense_computation(tmp_path, method):
    m1, m2 = _pair(n_cliques=8, per=4, seed=6)
    m1.distances[3, 5] = np.inf  # never a match: kept out of the statistics
    m2.distances[1, :] = np.round(m2.distances[1, :], 1)  # some ties
    alphas = [0.0, 0.5, 1.0, 2.0]
    npz = [write_matrix(tmp_path / "a.npz", m1), write_matrix(tmp_path / "b.npz", _permuted(m2, 3))]
    h5 = [write_matrix(tmp_path / "a.h5", m1), write_matrix(tmp_path / "b.h5", _permuted(m2, 3))]
    block = 8 * 32 * 5  # 5 rows per block: several blocks
    plan_n, rows_n = fuse_paths(npz, ["a", "b"], alphas, method, block_bytes=block)
    plan_h, rows_h = fuse_paths(h5, ["a", "b"], alphas, method, block_bytes=block)
    assert [r.metrics for r in rows_h] == [r.metrics for r in rows_n]
    assert plan_h.query_keys == m1.query_keys and plan_h.report == plan_n.report
    for row, want in zip(rows_h, _dense_fusion_maps(m1, m2, alphas, method)):
        for key in ("map", "mr1", "arp", "map_ci"):
            assert row.metrics[key] == pytest.approx(want[key], abs=1e-9)


def test_fused_matrix_written_by_row_blocks(tmp_path):
    m1, m2 = _pair(seed=7)
    paths = [write_matrix(tmp_path / "a.h5", m1), write_matrix(tmp_path / "b.h5", m2)]
    sources = [open_rows(p) for p in paths]
    try:
        plan = plan_alignment(sources, ["a", "b"])
        write_fused(tmp_path / "fused.h5", plan, [0.7], "zscore", {"weights": [0.7]}, block_bytes=8 * 18 * 4)
    finally:
        for s in sources:
            s.close()
    aligned = align([m1, m2], ["a", "b"])
    own = own_entries(aligned.query_keys, aligned.candidate_keys)
    want = combine([normalize(d, "zscore", own) for d in aligned.distances], [0.7])
    fused = read_matrix(tmp_path / "fused.h5")
    np.testing.assert_allclose(fused.distances, want, rtol=1e-6)
    assert fused.metadata == {"weights": [0.7]}


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_candidates_left_out_never_change_the_ranking(ties):
    """Candidates above every relevant one at both ends of the weight range are left out of the
    per-weight ranking: the metrics still equal the whole-matrix ones at every weight."""
    from wealy_cli.ranking.metrics import RankAccumulator

    m1, m2 = _pair(n_cliques=10, per=4, seed=9)
    m2.distances[:, ::7] = np.round(m2.distances[:, ::7], 1)  # ties
    alphas = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
    aligned = align([m1, m2], ["a", "b"])
    rows = fuse_grid(aligned, alphas, ties=ties)
    acc = RankAccumulator(aligned.query_cliques, aligned.candidate_cliques, aligned.query_keys,
                          aligned.candidate_keys, ties=ties)
    mats = [np.asarray(d, dtype=np.float64) for d in aligned.distances]
    kept = candidates_that_matter(mats, [(a,) for a in alphas], acc, np.arange(len(aligned.query_keys)))
    assert np.mean([len(c) for c in kept]) < 0.8 * len(aligned.candidate_keys)  # some are left out
    for row, want in zip(rows, _dense_fusion_maps(m1, m2, alphas, "none", ties)):
        for key in ("map", "mr1", "arp"):
            assert row.metrics[key] == pytest.approx(want[key], abs=1e-12)
