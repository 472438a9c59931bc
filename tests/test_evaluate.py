"""`wealy evaluate` and `wealy distances` end to end: a real (small) model, a real store, real
processes; numbers checked against a dense computation written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.cli import run_wealy, run_wealy_process
from helpers.evaluation import common

from wealy_cli.core.safepickle import safe_load
from wealy_cli.ranking.matrixfile import read_matrix


def reference_ap(dist, cliques):
    aps = []
    for i in range(len(cliques)):
        cand = np.array([j for j in range(len(cliques)) if j != i])
        rel = np.array([cliques[j] == cliques[i] for j in cand])
        order = np.lexsort((cand, rel.astype(int), dist[i, cand]))
        hits = np.flatnonzero(rel[order]) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
    return np.array(aps)


@pytest.fixture(scope="module")
def setup(eval_setup):
    return eval_setup


def dense_song_distances(model, items, chunk, overlap, topk):
    from wealy_cli.ranking.chunks import chunk_spans

    emb = []
    with torch.no_grad():
        for x in items.values():
            x = torch.from_numpy(x.astype(np.float32))
            z = torch.stack([model(x[a:b][None])[0] for a, b in chunk_spans(len(x), chunk, overlap)])
            emb.append(torch.nn.functional.normalize(z, dim=-1).numpy().astype(np.float64))
    n = len(emb)
    return np.array([[np.sort((1 - emb[i] @ emb[j].T).ravel())[:topk].mean() for j in range(n)] for i in range(n)])


@pytest.mark.slow
def test_evaluate_matches_dense_computation_and_two_workers_agree(setup, tmp_path):
    root, items, model = setup
    out = tmp_path / "run"
    proc = run_wealy("evaluate", *common(root), "--topk", "3", "--output", out, "--cache", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "MAP" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    cliques = [k.split("/")[0] for k in items]
    ap = reference_ap(dense_song_distances(model, items, 12, 0.5, 3), cliques)
    assert results["metrics"]["map"] == pytest.approx(ap.mean(), abs=2e-3)  # fp16 cache
    assert results["metrics"]["n_queries"] == 30
    lines = (out / "per_query.csv").read_text().splitlines()
    assert lines[0] == "key,clique,ap,first_rank,rp" and len(lines) == 31
    assert (out / "settings.yaml").is_file()
    # Two Fabric workers (CPU processes), each embedding half the songs into a fresh cache.
    two = tmp_path / "two"
    proc = run_wealy_process("evaluate", *common(root), "--topk", "3", "--output", two, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((two / "results.json").read_text())["metrics"] == results["metrics"]
    assert (two / "per_query.csv").read_text() == (out / "per_query.csv").read_text()
    assert len(list((two / "cache").iterdir())) == 1


@pytest.mark.parametrize("suffix,extra", [(".npz", []), (".pkl", ["--format", "pickle"]), (".h5", [])])
def test_distances_file_matches_dense_computation(setup, tmp_path_factory, suffix, extra):
    root, items, model = setup
    folder = root / "distances"  # shared by both formats: the second run reuses the cached embeddings
    path = folder / f"d{suffix}"
    proc = run_wealy("distances", *common(root), "--topk", "1", "--output", path, *extra)
    assert proc.returncode == 0, proc.stderr
    m = read_matrix(path)
    assert m.query_keys == list(items) and m.candidate_keys == list(items)
    want = dense_song_distances(model, items, 12, 0.5, 1)
    np.testing.assert_allclose(m.distances, want, atol=3e-3)  # fp16 chunk-embedding cache
    if suffix == ".pkl":  # the original layout
        raw = safe_load(path)
        assert set(raw) >= {"distance_matrix", "query_references", "candidate_references", "metadata"}
        assert raw["query_references"][4] == {"clique": "s1", "version": "v4", "matrix_row": 4}
    assert len(list((folder / "cache").iterdir())) == 1
    if suffix == ".h5":  # written by row blocks: the same numbers as the in-memory formats
        assert not [p for p in folder.iterdir() if p.name.startswith(".d.h5")]  # no temporary left
        dense = folder / "dense.npz"
        proc = run_wealy("distances", *common(root), "--topk", "1", "--output", dense)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(m.distances, read_matrix(dense).distances)


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    root, _, _ = setup
    proc = run_wealy("evaluate", *common(root), "--topk", "0", "--output", tmp_path / "x")
    assert proc.returncode == 2 and "--topk" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_wealy("evaluate", "--store", root / "features", "--dataset", "csv", "--metadata", root / "split.csv",
                     "--output", tmp_path / "y")
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr
    proc = run_wealy("distances", *common(root), "--output", tmp_path / "d.txt")
    assert proc.returncode == 2 and "d.txt" in proc.stderr
