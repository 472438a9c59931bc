"""Catalogue index and search (library): exact search against `distances` and a dense reference,
ANN recall against numpy brute force, add == build of the union, SIGKILL during a build, and
damaged or mismatched indexes refused with one line and left unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_store

from wealy_cli.core.errors import UserError
from wealy_cli.model.network import ModelConfig, build_model, save_weights
from wealy_cli.ranking.matrixfile import read_matrix
from wealy_cli.retrieval.evaluate import write_distances
from wealy_cli.retrieval.index import MANIFEST, Index, IndexFileError, SongEntry, append_songs, new_manifest
from wealy_cli.retrieval.index_build import add_to_index, build_index
from wealy_cli.retrieval.options import DistancesRun, IndexAddRun, IndexBuildRun, IndexKindOptions, SearchOptions
from wealy_cli.retrieval.search import Searcher

DIM = 12
SIZES = dict(input_channels=DIM, hidden_dim=16, zdim=8, num_heads=4, ff_dim=32, num_transformer_blocks=2)


def checkpoint(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(**SIZES)
    save_weights(directory / "best", build_model(cfg).eval(), cfg)
    return directory


def collection(root: Path, n_cliques: int = 25, seed: int = 0, prefix: str = "c") -> dict[str, np.ndarray]:
    """Songs of 5–60 feature rows (1–7 chunks of 16 rows at overlap 0.5) in cliques of 2–4."""
    rng = np.random.default_rng(seed)
    items = {}
    for c in range(n_cliques):
        base = rng.standard_normal((1, DIM))
        for v in range(int(rng.integers(2, 5))):
            rows = int(rng.integers(5, 60))
            items[f"{prefix}{c}/v{v}"] = (base + 0.7 * rng.standard_normal((rows, DIM))).astype(np.float16)
    return items


def write_csv(path: Path, keys, split: str = "test", extra: bool = True) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clique", "version", "path", "split", "title"])
        for key in keys:
            clique, version = key.split("/")
            writer.writerow([clique, version, f"{clique}-{version}.mp3", split, f"Title {key}"])
    return path


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    items = collection(root)
    make_store(root / "store", items, DIM)
    write_csv(root / "songs.csv", items)
    checkpoint(root / "ckpt")
    return root, items


def options(root: Path, output: Path, **kw) -> IndexBuildRun:
    base = dict(store=root / "store", output=output, checkpoint=root / "ckpt", dataset="csv",
                metadata=root / "songs.csv", split="test", chunk=16, overlap=0.5)
    return IndexBuildRun(**{**base, **kw})


def add_options(root: Path, index: Path, **kw) -> IndexAddRun:
    base = dict(index=index, store=root / "store", dataset="csv", metadata=root / "songs.csv", split="test")
    return IndexAddRun(**{**base, **kw})


def dense_reference(emb: list[np.ndarray], topk: int) -> np.ndarray:
    """Every chunk pair of every song pair in float64, sorted; mean of the k smallest distances."""
    unit = [e.astype(np.float64) / np.linalg.norm(e.astype(np.float64), axis=1, keepdims=True) for e in emb]
    out = np.zeros((len(unit), len(unit)))
    for i, a in enumerate(unit):
        for j, b in enumerate(unit):
            out[i, j] = np.sort((1 - a @ b.T).ravel())[:topk].mean()
    return out


def assert_same_ranking(got_keys, got_dist, ref_keys, ref_dist, tol=1e-5):
    """Equal distances; equal order except among songs whose distances tie within ``tol``."""
    np.testing.assert_allclose(got_dist, ref_dist, atol=tol)
    position = {k: i for i, k in enumerate(ref_keys)}
    for a, b in zip(got_keys, ref_keys):
        if a != b:  # a tie: both at the same distance
            assert abs(ref_dist[position[a]] - ref_dist[position[b]]) <= tol, (a, b)


# ---------------------------------------------------------------- exact search


@pytest.mark.parametrize("topk", [1, 3])
def test_exact_index_ranks_as_distances_and_dense_reference(catalogue, tmp_path, topk):
    root, items = catalogue
    report = build_index(options(root, tmp_path / "index", topk=topk))
    assert report.added == report.songs == len(items)
    write_distances(DistancesRun(store=root / "store", output=tmp_path / "d.npz", checkpoint=root / "ckpt",
                                 dataset="csv", metadata=root / "songs.csv", chunk=16, overlap=0.5, topk=topk), "npz")
    matrix = read_matrix(tmp_path / "d.npz")
    index = Index(tmp_path / "index")
    keys = [r["key"] for r in index.records()]
    assert sorted(keys) == sorted(matrix.query_keys)
    dense = dense_reference([index.chunks(i) for i in range(index.n_songs)], topk)
    everything = Searcher(index, SearchOptions(top=len(keys), probe=index.n_chunks))
    top10 = Searcher(index, SearchOptions(top=10, probe=1))  # flat + topk 1: probe is raised to be exact
    for row, key in enumerate(matrix.query_keys):
        result = everything.search_key(key)
        ref_order = np.argsort(matrix.distances[row], kind="stable")
        ref_keys = [matrix.candidate_keys[j] for j in ref_order]
        got_keys = [h.key for h in result.hits]
        assert_same_ranking(got_keys, [h.distance for h in result.hits], ref_keys, matrix.distances[row][ref_order])
        if topk == 1:  # the query itself comes first, at ~0 (with topk 3, pairs off the diagonal count)
            assert got_keys[0] == key and result.hits[0].distance < 1e-5
        i = keys.index(key)
        np.testing.assert_allclose(sorted(h.distance for h in result.hits), np.sort(dense[i]), atol=1e-5)
        if topk == 1:
            best = top10.search_key(key)
            assert_same_ranking([h.key for h in best.hits], [h.distance for h in best.hits], ref_keys[:10],
                                matrix.distances[row][ref_order][:10])
    hit = everything.search_key(matrix.query_keys[0]).hits[0]
    assert hit.meta == {"path": str(root / "c0-v0.mp3"), "title": "Title c0/v0"} and hit.clique == "c0"


def test_index_of_a_store_without_dataset_and_info(catalogue, tmp_path):
    root, items = catalogue
    build_index(options(root, tmp_path / "index", dataset=None, metadata=None))
    index = Index(tmp_path / "index")
    info = index.info()
    assert info["songs"] == len(items) and info["kind"] == "flat" and info["chunk / overlap / topk"] == "16 / 0.5 / 1"
    assert index.manifest["features"]["settings"] == {"test": True}
    assert index.record(0)["meta"] == {}  # no dataset: nothing but the stored clique and version
    assert not (tmp_path / "index" / ".cache").exists()  # the default cache goes once the index is built


# ---------------------------------------------------------------- ANN recall


def clustered(rng, n_songs: int, dim: int = 64) -> list[np.ndarray]:
    """Songs of 3–20 unit chunks around a work centre (≈ 2 songs per work)."""
    works = rng.standard_normal((n_songs // 2, dim))
    songs = []
    for s in range(n_songs):
        centre = works[s % len(works)] + 0.6 * rng.standard_normal(dim)
        x = centre + 0.5 * rng.standard_normal((int(rng.integers(3, 21)), dim))
        songs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    return songs


def brute_force_top(query: np.ndarray, songs: list[np.ndarray], k: int) -> list[int]:
    q = query.astype(np.float64)
    best = [(1 - (q @ s.astype(np.float64).T).max(), i) for i, s in enumerate(songs)]
    return [i for _, i in sorted(best)[:k]]


@pytest.mark.parametrize("params", [IndexKindOptions(kind="ivf-pq", m=16, nprobe=16), IndexKindOptions(kind="hnsw")])
def test_ann_recall_against_brute_force(tmp_path, params):
    rng = np.random.default_rng(5)
    songs = clustered(rng, 800)
    entries = (SongEntry(f"w{i % 400}/s{i}", f"w{i % 400}", f"s{i}", s) for i, s in enumerate(songs))
    manifest = new_manifest(64, params, {"topk": 1})
    append_songs(tmp_path / "index", entries, len(songs), manifest)
    index = Index(tmp_path / "index")
    assert index.params.kind == params.kind and index.n_songs == 800
    searcher = Searcher(index, SearchOptions(top=10, probe=50))
    recalls = []
    for i in rng.choice(len(songs), 40, replace=False):
        query = songs[int(i)].astype(np.float32) + 0.05 * rng.standard_normal(songs[int(i)].shape)
        query = (query / np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float16)
        got = [h.song for h in searcher.search(query, "q").hits]
        recalls.append(len(set(got) & set(brute_force_top(query, songs, 10))) / 10)
    assert np.mean(recalls) >= 0.9, np.mean(recalls)


# ---------------------------------------------------------------- add, resume


def test_add_equals_build_of_the_union(tmp_path):
    items = collection(tmp_path, 20, seed=1)
    first = dict(list(items.items())[:40])
    make_store(tmp_path / "store", items, DIM)
    write_csv(tmp_path / "songs.csv", items)
    write_csv(tmp_path / "first.csv", first)
    checkpoint(tmp_path / "ckpt")
    build_index(options(tmp_path, tmp_path / "grown", metadata=tmp_path / "first.csv"))
    before = Index(tmp_path / "grown").n_songs
    report = add_to_index(add_options(tmp_path, tmp_path / "grown"))
    assert report.added == len(items) - before and report.already_indexed == before
    build_index(options(tmp_path, tmp_path / "union"))
    grown, union = Index(tmp_path / "grown"), Index(tmp_path / "union")
    assert sorted(r["key"] for r in grown.records()) == sorted(r["key"] for r in union.records())
    a, b = Searcher(grown, SearchOptions(top=15)), Searcher(union, SearchOptions(top=15))
    for key in items:
        ra, rb = a.search_key(key), b.search_key(key)
        assert_same_ranking([h.key for h in ra.hits], [h.distance for h in ra.hits],
                            [h.key for h in rb.hits], [h.distance for h in rb.hits], tol=0)
        np.testing.assert_array_equal(grown.chunks(grown.find(key)), union.chunks(union.find(key)))
    again = add_to_index(add_options(tmp_path, tmp_path / "grown"))
    assert again.added == 0 and Index(tmp_path / "grown").n_songs == len(items)


BUILD_CHILD = """
import sys
import time
from pathlib import Path
from wealy_cli.retrieval.index_build import build_index
from wealy_cli.retrieval.options import IndexBuildRun
root, out = Path(sys.argv[1]), Path(sys.argv[2])
build_index(IndexBuildRun(store=root / "store", output=out, checkpoint=root / "ckpt", chunk=16, overlap=0.5,
                          batch_size=4))
print("done")
"""


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def kill_when(args: list, env: dict, condition) -> bool:
    """Run a child; SIGKILL it as soon as ``condition()`` holds. True if it was killed."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    return False


def test_build_resumes_after_sigkill(tmp_path):
    items = collection(tmp_path, 600, seed=2)
    make_store(tmp_path / "store", items, DIM)
    checkpoint(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "index"
    args = [sys.executable, "-c", BUILD_CHILD, tmp_path, out]
    shards = lambda: any((out / ".cache").glob("*/shards/*.h5"))  # noqa: E731 - embedding under way
    torn = lambda: (out / "vectors.f16").is_file() and (out / "vectors.f16").stat().st_size > 0  # noqa: E731
    assert kill_when(args, env, shards)  # while embedding
    assert not (out / MANIFEST).exists()
    assert kill_when(args, env, torn)  # while writing the index files, before the manifest commits them
    assert not (out / MANIFEST).exists()
    assert not kill_when(args, env, lambda: False)  # the rerun finishes what is left
    build_index(IndexBuildRun(store=tmp_path / "store", output=tmp_path / "clean", checkpoint=tmp_path / "ckpt",
                              chunk=16, overlap=0.5, batch_size=4))
    resumed, clean = Index(out), Index(tmp_path / "clean")
    assert resumed.n_songs == clean.n_songs == len(items) and resumed.n_chunks == clean.n_chunks
    assert (out / "vectors.f16").stat().st_size == resumed.n_chunks * resumed.dim * 2  # the torn tail is gone
    for key in list(items)[::37]:
        np.testing.assert_array_equal(resumed.chunks(resumed.find(key)), clean.chunks(clean.find(key)))
        ra = Searcher(resumed, SearchOptions()).search_key(key)
        rb = Searcher(clean, SearchOptions()).search_key(key)
        assert [h.key for h in ra.hits] == [h.key for h in rb.hits]


ADD_CHILD = """
import sys
from pathlib import Path
from wealy_cli.retrieval.index_build import add_to_index
from wealy_cli.retrieval.options import IndexAddRun
root, out = Path(sys.argv[1]), Path(sys.argv[2])
add_to_index(IndexAddRun(index=out, store=root / "store", batch_size=4))
"""


def test_add_killed_keeps_the_committed_index(tmp_path):
    items = collection(tmp_path, 600, seed=3)
    make_store(tmp_path / "store", items, DIM)
    make_store(tmp_path / "few", dict(list(items.items())[:50]), DIM)
    checkpoint(tmp_path / "ckpt")
    out = tmp_path / "index"
    build_index(IndexBuildRun(store=tmp_path / "few", output=out, checkpoint=tmp_path / "ckpt", chunk=16,
                              overlap=0.5))
    committed = Index(out).n_chunks * Index(out).dim * 2
    before = Searcher(Index(out), SearchOptions()).search_key("c0/v0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", ADD_CHILD, tmp_path, out]
    grew = lambda: (out / "vectors.f16").stat().st_size > committed  # noqa: E731 - appending, not committed
    assert kill_when(args, env, grew)
    index = Index(out)  # the committed 50 songs, as they were
    assert index.n_songs == 50 and index.faiss.ntotal == index.n_chunks
    after = Searcher(index, SearchOptions()).search_key("c0/v0")
    assert [(h.key, h.distance) for h in after.hits] == [(h.key, h.distance) for h in before.hits]
    assert not kill_when(args, env, lambda: False)
    assert Index(out).n_songs == len(items)


# ---------------------------------------------------------------- refusals


def test_refusals_leave_the_index_unchanged(catalogue, tmp_path):
    root, items = catalogue
    build_index(options(root, tmp_path / "index"))
    digest = tree_digest(tmp_path / "index")
    searcher = Searcher(Index(tmp_path / "index"), SearchOptions())
    with pytest.raises(UserError, match=r"--key 'nope/1': not in the index .*index \(\d+ songs"):
        searcher.search_key("nope/1")
    checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(IndexFileError, match=r"--checkpoint .*other: weights \(digest \w+\) are not those the index"):
        add_to_index(add_options(root, tmp_path / "index", checkpoint=tmp_path / "other"))
    with pytest.raises(IndexFileError, match=r"already holds an index built with other weights"):
        build_index(options(root, tmp_path / "index", checkpoint=tmp_path / "other"))
    with pytest.raises(IndexFileError, match=r"already holds an index with chunk 16 \(now 8\)"):
        build_index(options(root, tmp_path / "index", chunk=8))
    assert tree_digest(tmp_path / "index") == digest
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(IndexFileError, match=r"stuff: not empty and not an index \(holds 'notes.txt'\)"):
        build_index(options(root, tmp_path / "stuff"))


def damage(directory: Path, how: str) -> str:
    manifest = json.loads((directory / MANIFEST).read_text())
    if how == "manifest":
        (directory / MANIFEST).write_text("{not json")
        return r"manifest.json: manifest is not valid JSON"
    if how == "newer":
        (directory / MANIFEST).write_text(json.dumps({**manifest, "version": 99, "wealy": "9.0"}))
        return r"manifest.json: index format version 99 is newer than this wealy reads \(1; made by wealy 9.0\)"
    if how == "vectors":
        path = directory / "vectors.f16"
        path.write_bytes(path.read_bytes()[:100])
        return r"vectors.f16: holds 100 bytes, the manifest counts \d+; the index is damaged"
    if how == "offsets":
        path = directory / "offsets.i64"
        data = np.fromfile(path, np.int64)
        data[3] = data[2]
        data.tofile(path)
        return r"offsets.i64: chunk or song offsets are inconsistent"
    if how == "faiss":
        path = directory / manifest["faiss"]
        path.write_bytes(b"\0" * path.stat().st_size)
        return r"index-00001.faiss: cannot be read as a FAISS index"
    if how == "faiss-missing":
        (directory / manifest["faiss"]).unlink()
        return r"index-00001.faiss: FAISS index file is missing"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["manifest", "newer", "vectors", "offsets", "faiss", "faiss-missing"])
def test_damaged_index_is_refused_and_left_as_it_is(catalogue, tmp_path, how):
    root, _ = catalogue
    build_index(options(root, tmp_path / "index"))
    message = damage(tmp_path / "index", how)
    digest = tree_digest(tmp_path / "index")
    with pytest.raises(IndexFileError, match=message):
        Searcher(Index(tmp_path / "index"), SearchOptions()).search_key("c0/v0")
    with pytest.raises(IndexFileError, match=message):
        add_to_index(add_options(root, tmp_path / "index"))
    assert tree_digest(tmp_path / "index") == digest


# ---------------------------------------------------------------- lyrics + audio


def clews_store(directory: Path, keys, seed: int = 9) -> Path:
    """CLEWS-like shingle embeddings (3–9 shingles × 6), versions of a clique near each other."""
    from wealy_cli.core.store import StoreWriter

    rng = np.random.default_rng(seed)
    centres: dict[str, np.ndarray] = {}
    with StoreWriter(directory, 6, settings={"features": "clews", "checkpoint_sha256": "x" * 64}, kind="clews") as w:
        for key in keys:
            clique, version = key.split("/")
            centre = centres.setdefault(clique, rng.standard_normal(6))
            w.add(key, centre + 0.8 * rng.standard_normal((int(rng.integers(3, 10)), 6)), clique=clique,
                  version=version)
    return directory


@pytest.mark.parametrize("normalize", ["none", "zscore", "rank"])
def test_fused_search_equals_a_row_of_wealy_fuse(catalogue, tmp_path, normalize):
    from wealy_cli.clews.distances import clews_distance_matrix
    from wealy_cli.core.datasets import load_split
    from wealy_cli.core.store import Store
    from wealy_cli.ranking.fusion import align, combine, own_entries
    from wealy_cli.ranking.fusion import normalize as fuse_normalize

    root, items = catalogue
    clews_store(tmp_path / "clews", items)
    build_index(options(root, tmp_path / "index", clews_store=tmp_path / "clews"))
    # The reference: the two all-against-all matrices, aligned, normalised and combined by wealy fuse.
    write_distances(DistancesRun(store=root / "store", output=tmp_path / "lyrics.npz", checkpoint=root / "ckpt",
                                 dataset="csv", metadata=root / "songs.csv", chunk=16, overlap=0.5), "npz")
    split = load_split("csv", "test", root / "songs.csv", check_audio=False)
    audio = clews_distance_matrix(Store(tmp_path / "clews"), split)
    aligned = align([read_matrix(tmp_path / "lyrics.npz"), audio], ["lyrics", "audio"])
    own = own_entries(aligned.query_keys, aligned.candidate_keys)
    alpha = 0.7
    fused = combine([fuse_normalize(d, normalize, own) for d in aligned.distances], [alpha])
    index = Index(tmp_path / "index")
    searcher = Searcher(index, SearchOptions(top=index.n_songs, probe=index.n_chunks, alpha=alpha,
                                             normalize=normalize))
    # A distance recomputed for the query can differ from the matrix's in the last float bit, which
    # moves its rank among the matrix's values by a step (1 / (n² − 1)) when it meets an equal value.
    tol = 1e-4 + (alpha + 1) * 2 / (fused.size - 1) if normalize == "rank" else 1e-4
    for row in range(0, len(aligned.query_keys), 5):
        key = aligned.query_keys[row]
        result = searcher.search_key(key)
        order = [j for j in np.argsort(fused[row], kind="stable") if aligned.candidate_keys[j] != key]
        hits = [h for h in result.hits if h.key != key]  # own entries: a 69-way tie at ~0 under rank
        assert_same_ranking([h.key for h in hits], [h.distance for h in hits],
                            [aligned.candidate_keys[j] for j in order], fused[row][order], tol=tol)
        by_key = {h.key: h for h in result.hits}
        j = aligned.candidate_keys.index(key)
        assert abs(by_key[key].audio_distance - aligned.distances[1][row, j]) < 1e-5
    with pytest.raises(UserError, match="holds no CLEWS embeddings"):
        Searcher(_plain_index(root, tmp_path), SearchOptions(alpha=1.0))


def _plain_index(root: Path, tmp_path: Path) -> Index:
    build_index(options(root, tmp_path / "plain"))
    return Index(tmp_path / "plain")


def test_a_second_writer_is_refused_while_one_holds_the_index(catalogue, tmp_path):
    from test_concurrency import hold_lock

    from wealy_cli.core.lock import LockedError

    root, _ = catalogue
    build_index(options(root, tmp_path / "index"))
    digest = tree_digest(tmp_path / "index")
    holder = hold_lock(tmp_path / "index", f"until={tmp_path / 'go'}")
    try:
        with pytest.raises(LockedError, match=r"index: this index is in use by .*lock_holder.py"):
            add_to_index(add_options(root, tmp_path / "index"))
        with pytest.raises(LockedError, match="in use by"):
            build_index(options(root, tmp_path / "index"))
        result = Searcher(Index(tmp_path / "index"), SearchOptions()).search_key("c0/v0")  # readers need no lock
        assert result.hits[0].key == "c0/v0"
    finally:
        (tmp_path / "go").write_text("")
        holder.wait(timeout=30)
    assert {k: v for k, v in tree_digest(tmp_path / "index").items() if k != ".wealy.lock"} == \
        {k: v for k, v in digest.items() if k != ".wealy.lock"}
    assert add_to_index(add_options(root, tmp_path / "index")).added == 0  # free again


@pytest.mark.slow
def test_two_processes_build_the_index_one_process_builds(catalogue, tmp_path):
    """`index build --gpus 0 --workers 2`: both processes embed (each its share of the songs), rank
    0 writes the index; the index files equal a one-process build's byte for byte."""
    from helpers.cli import run_wealy_process

    root, _ = catalogue
    build_index(options(root, tmp_path / "one"))
    proc = run_wealy_process("-q", "index", "build", "--checkpoint", root / "ckpt", "--store", root / "store",
                             "--dataset", "csv", "--metadata", root / "songs.csv", "--split", "test", "--chunk", "16",
                             "--overlap", "0.5", "-o", tmp_path / "two", "--gpus", "0", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = json.loads((tmp_path / "two" / MANIFEST).read_text())
    assert cache["songs"] == json.loads((tmp_path / "one" / MANIFEST).read_text())["songs"]
    for name in ("vectors.f16", "offsets.i64", "songs.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
