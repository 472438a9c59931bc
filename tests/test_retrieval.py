"""Chunking, blocked song distances and tiled all-against-all metrics against dense references."""

from __future__ import annotations

import helpers.metrics_reference as ref
import numpy as np
import pytest
import torch
from helpers.stores import make_store

from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.ranking.chunks import EmbedOptions, chunk_spans, embed_chunks, embedding_groups
from wealy_cli.ranking.metrics import retrieval_metrics
from wealy_cli.ranking.tiles import SongSet, all_against_all, dense_distances, distance_rows


def test_chunk_spans_by_hand():
    assert chunk_spans(0, 1500, 0.9) == []
    assert chunk_spans(100, 1500, 0.9) == [(0, 100)]
    assert chunk_spans(1500, 1500, 0.9) == [(0, 1500)]
    assert chunk_spans(1650, 1500, 0.9) == [(0, 1500), (150, 1650)]
    assert chunk_spans(1700, 1500, 0.9) == [(0, 1500), (150, 1650), (200, 1700)]  # tail-aligned last chunk
    assert chunk_spans(10, chunk=4, overlap=0.5) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_spans(11, chunk=4, overlap=0.5)[-1] == (7, 11)
    with pytest.raises(ValueError):
        chunk_spans(10, chunk=4, overlap=1.0)


def random_songs(rng, n, max_chunks, dim=16, clique_max=6):
    cliques, c = [], 0
    while len(cliques) < n:
        cliques += [f"c{c}"] * int(rng.integers(2, clique_max + 1))
        c += 1
    cliques = list(rng.permutation(cliques[:n]))
    emb = [rng.standard_normal((int(rng.integers(1, max_chunks + 1)), dim)) for _ in range(n)]
    return [e / np.linalg.norm(e, axis=1, keepdims=True) for e in emb], cliques


def dense_reference(emb, topk):
    """Every chunk pair of every song pair in float64, sorted; mean of the k smallest."""
    n = len(emb)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d = np.sort((1 - emb[i] @ emb[j].T).ravel())
            out[i, j] = d[:topk].mean()
    return out


@pytest.mark.parametrize("topk", [1, 3])
@pytest.mark.parametrize("max_chunks", [1, 5])
def test_blocked_distances_equal_dense(topk, max_chunks):
    rng = np.random.default_rng(topk * 10 + max_chunks)
    emb, cliques = random_songs(rng, 90, max_chunks)
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=24)
    assert len(songs.tiles) > 3
    np.testing.assert_allclose(dense_distances(songs, topk), dense_reference(emb, topk), atol=2e-6)


@pytest.mark.parametrize("block_bytes", [4 * 90 * 7, 2**28])
def test_distance_rows_cover_the_dense_matrix_row_block_by_row_block(block_bytes):
    rng = np.random.default_rng(5)
    emb, cliques = random_songs(rng, 90, 4)
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=24)
    seen = np.zeros(90, dtype=int)
    out = np.full((90, 90), np.nan, dtype=np.float32)
    for index, block in distance_rows(songs, 2, block_bytes):
        assert block.shape == (len(index), 90) and block.dtype == np.float32
        assert len(index) <= max(1, block_bytes // (4 * 90))
        out[index] = block
        seen[index] += 1
    assert (seen == 1).all()
    np.testing.assert_allclose(out, dense_reference(emb, 2), atol=2e-6)


def test_shared_row_blocks_and_tile_pairs_cover_the_matrix_once():
    """Three workers' row blocks (distance_rows rank::3) and tile-pair blocks (distance_blocks)
    together give the dense reference, each row and each pair exactly once."""
    from wealy_cli.ranking.tiles import assemble_distances, distance_blocks, row_blocks

    rng = np.random.default_rng(6)
    emb, cliques = random_songs(rng, 90, 4)
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=24)
    reference = dense_reference(emb, 2)
    block_bytes = 4 * 90 * 7
    assert len(row_blocks(songs, block_bytes)) > 6
    seen = np.zeros(90, dtype=int)
    out = np.full((90, 90), np.nan, dtype=np.float32)
    for rank in range(3):
        for index, block in distance_rows(songs, 2, block_bytes, rank=rank, world=3):
            out[index] = block
            seen[index] += 1
    assert (seen == 1).all()
    np.testing.assert_allclose(out, reference, atol=2e-6)
    blocks = [b for rank in range(3) for b in distance_blocks(songs, 2, rank, 3)]
    assert sorted((i, j) for i, j, _ in blocks) == songs.tile_pairs()
    np.testing.assert_allclose(assemble_distances(songs, blocks), reference, atol=2e-6)


def reference_metrics(dist, cliques, ties="expected"):
    reference = ref.expected_by_groups if ties == "expected" else ref.pessimistic
    return ref.per_query(reference, dist, cliques, cliques, np.arange(len(cliques)))


@pytest.mark.parametrize("topk,max_chunks", [(1, 1), (1, 4), (3, 4)])
def test_tiled_metrics_equal_dense_reference(topk, max_chunks):
    rng = np.random.default_rng(7 + topk + max_chunks)
    emb, cliques = random_songs(rng, 150, max_chunks, clique_max=12)
    # Make it a retrieval problem: versions share a clique direction.
    centre = {c: rng.standard_normal(16) for c in set(cliques)}
    emb = [e + 0.2 * centre[c] for e, c in zip(emb, cliques)]
    emb = [e / np.linalg.norm(e, axis=1, keepdims=True) for e in emb]
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=32)
    m = all_against_all(songs, topk)
    ap, first, rp = reference_metrics(dense_reference(emb, topk), cliques)
    assert 0.05 < ap.mean() < 0.95  # neither trivial nor hopeless
    np.testing.assert_allclose(m.ap, ap, atol=1e-12)
    np.testing.assert_allclose(m.first_rank, first, atol=1e-12)
    np.testing.assert_allclose(m.rp, rp, atol=1e-9)
    assert m.map == pytest.approx(ap.mean()) and m.n_queries == 150 and m.ties == "expected"


def tied_songs(rng, n, max_chunks, clique_max=8, dim=8):
    """Chunks with four entries ±1/2 (unit norm, exact in float32): every cosine is a multiple of
    1/4, computed exactly in any order, so song distances tie massively and exactly."""
    cliques, c = [], 0
    while len(cliques) < n:
        cliques += [f"c{c}"] * int(rng.integers(2, clique_max + 1))
        c += 1
    cliques = list(rng.permutation(cliques[:n]))
    emb = []
    for _ in range(n):
        e = np.zeros((int(rng.integers(1, max_chunks + 1)), dim))
        for row in e:
            row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        emb.append(e)
    return emb, cliques


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
@pytest.mark.parametrize("topk,max_chunks", [(1, 1), (2, 3)])
def test_tiled_metrics_with_exact_ties_equal_dense_reference_for_any_worker_split(ties, topk, max_chunks):
    rng = np.random.default_rng(20 + topk)
    emb, cliques = tied_songs(rng, 160, max_chunks)
    dense = dense_reference(emb, topk)  # float64; the same values as float32 (multiples of 1/8)
    assert len(np.unique(dense)) < 20  # tie-heavy indeed
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=24)
    assert len(songs.tiles) > 4
    want = reference_metrics(dense, cliques, ties)
    single = all_against_all(songs, topk, ties=ties)
    np.testing.assert_allclose(single.ap, want[0], atol=1e-12)
    np.testing.assert_allclose(single.first_rank, want[1], atol=1e-12)
    np.testing.assert_allclose(single.rp, want[2], atol=1e-9)
    assert single.ties == ties
    flats = []
    for rank in range(2):  # two simulated workers; the reduce sums their integer counts
        all_against_all(songs, topk, rank, 2, reduce=lambda x: flats.append(x.clone()) or x, ties=ties)
    total = flats[0] + flats[1]
    merged = all_against_all(songs, topk, 0, 2, reduce=lambda x: total, ties=ties)
    np.testing.assert_array_equal(merged.ap, single.ap)
    np.testing.assert_array_equal(merged.first_rank, single.first_rank)
    np.testing.assert_array_equal(merged.rp, single.rp)
    assert merged.to_dict() == single.to_dict()


def test_workers_sum_to_the_single_worker_result():
    rng = np.random.default_rng(3)
    emb, cliques = random_songs(rng, 120, 3, clique_max=9)
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=20)
    single = all_against_all(songs, 3)
    flats = []
    for rank in range(3):  # each "worker" keeps its partial counts; the reduce sums them
        all_against_all(songs, 3, rank, 3, reduce=lambda x: flats.append(x.clone()) or x)
    total = torch.stack(flats).sum(0)
    merged = all_against_all(songs, 3, 0, 3, reduce=lambda x: total)
    np.testing.assert_array_equal(merged.ap, single.ap)
    np.testing.assert_array_equal(merged.rp, single.rp)
    assert merged.to_dict() == single.to_dict()


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_tiled_metrics_match_retrieval_metrics_on_the_dense_matrix(ties):
    rng = np.random.default_rng(11)
    emb, cliques = random_songs(rng, 200, 2, clique_max=20)
    songs = SongSet([e.astype(np.float32) for e in emb], cliques, tile_rows=50)
    dense = dense_distances(songs, 2)
    a = all_against_all(songs, 2, ties=ties)
    b = retrieval_metrics(dense, cliques, cliques, ties=ties)
    np.testing.assert_allclose(a.ap, b.ap, atol=1e-12)
    np.testing.assert_array_equal(a.first_rank, b.first_rank)
    np.testing.assert_allclose(a.rp, b.rp, atol=1e-12)


def test_embed_chunks_matches_direct_model_calls_and_resumes(tmp_path):
    from wealy_cli.model.network import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_channels=8, hidden_dim=16, zdim=8, num_transformer_blocks=1,
                                    num_heads=2, ff_dim=32, dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    items = {f"a/{i}": rng.standard_normal((n, 8)).astype(np.float16) for i, n in enumerate([5, 12, 23, 40])}
    features = Store(make_store(tmp_path / "feat", items, 8))
    opts = EmbedOptions(chunk=10, overlap=0.5, batch_size=3)
    with StoreWriter(tmp_path / "cache", 8, settings={"t": 1}, kind="chunk-embeddings") as cache:
        assert embed_chunks(model, features, embedding_groups(features, list(items), opts), cache, opts) == []
    cache = Store(tmp_path / "cache")
    for key, x in items.items():
        spans = chunk_spans(len(x), 10, 0.5)
        with torch.no_grad():
            want = [torch.nn.functional.normalize(model(torch.from_numpy(x[a:b].astype(np.float32))[None]), dim=-1)[0]
                    for a, b in spans]
        np.testing.assert_allclose(cache[key].astype(np.float32), torch.stack(want).numpy(), atol=2e-3)
    shards = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    with StoreWriter(tmp_path / "cache", 8, settings={"t": 1}, kind="chunk-embeddings") as again:
        embed_chunks(model, features, [list(items)], again, opts)  # all cached: nothing written
    assert sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir()) == shards
