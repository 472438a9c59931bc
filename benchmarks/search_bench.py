"""Catalogue search at scale on a synthetic catalogue: build time, size, latency, memory, recall.

The catalogue: N songs of 3–20 chunk embeddings (512-d; 3 + Binomial(17, 0.35) chunks, mean ≈ 9),
with the structure of a real one: songs are versions of works (≈ 2 versions per work in the
index), works belong to one of √N styles. Each chunk is a point of a 64-d latent space —
style + work + version + chunk offsets — mapped into 512-d by a fixed random orthonormal map,
plus isotropic 512-d noise, then L2-normalised. Expected cosines: chunks of one song ≈ 0.8, of
two versions of a work ≈ 0.55, same style ≈ 0.25, unrelated ≈ 0. Queries are new (unindexed)
versions of random indexed works.

Steps (the index is built with the library, ``retrieval.index.append_songs``, as ``wealy index
build`` does after embedding; the vectors are generated in batches, never all at once):

1. build: write the index of ``--kind`` (default ivf-pq, the kind for large catalogues);
2. search, in a fresh process: open the index (RSS measured after loading and after the
   queries), ``--warmup`` queries, then ``--queries`` timed queries, each from its chunk
   embeddings to the ranked list (``Searcher.search``: FAISS candidates + exact re-ranking);
3. exact reference: the true top 10 songs of every query by brute force over every stored chunk
   (numpy, streamed from the float16 vectors); recall@10 = |ANN top 10 ∩ exact top 10| / 10.

    python benchmarks/search_bench.py --songs 1000000            # ivf-pq
    python benchmarks/search_bench.py --songs 100000 --kind flat # exact

The last line is ``search: N songs, recall@10 R, p50 X ms, p99 Y ms, memory Z MB`` (memory: the
search process's resident set after the queries).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, LATENT = 512, 64
SHARES = {"style": 0.25, "work": 0.30, "version": 0.25, "chunk": 0.10, "noise": 0.10}  # of the squared norm
BATCH_SONGS = 20000


# ---------------------------------------------------------------- the synthetic catalogue


class Catalogue:
    def __init__(self, n_songs: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n = n_songs
        self.seed = seed
        self.n_works = max(1, n_songs // 2)
        n_styles = max(1, int(round(np.sqrt(n_songs))))
        basis, _ = np.linalg.qr(rng.standard_normal((DIM, LATENT)))
        self.basis = basis.astype(np.float32)  # 512 × 64, orthonormal columns
        styles = rng.standard_normal((n_styles, LATENT)).astype(np.float32) * np.sqrt(SHARES["style"] / LATENT)
        style_of = rng.integers(n_styles, size=self.n_works)
        offsets = rng.standard_normal((self.n_works, LATENT)).astype(np.float32) * np.sqrt(SHARES["work"] / LATENT)
        self.works = styles[style_of] + offsets  # latent centre of every work
        self.work_of = rng.permutation(np.arange(n_songs) % self.n_works)  # every work indexed at least once
        self.n_chunks = 3 + rng.binomial(17, 0.35, size=n_songs)

    def version(self, rng: np.random.Generator, work: int, n_chunks: int) -> np.ndarray:
        """Unit chunk embeddings (n_chunks × 512, float32) of one new version of ``work``."""
        centre = self.works[work] + rng.standard_normal(LATENT).astype(np.float32) * np.sqrt(
            SHARES["version"] / LATENT)
        latent = centre + rng.standard_normal((n_chunks, LATENT)).astype(np.float32) * np.sqrt(
            SHARES["chunk"] / LATENT)
        x = latent @ self.basis.T + rng.standard_normal((n_chunks, DIM)).astype(np.float32) * np.sqrt(
            SHARES["noise"] / DIM)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def songs(self):  # noqa: ANN201 - an iterator of SongEntry
        from wealy_cli.retrieval.index import SongEntry

        for start in range(0, self.n, BATCH_SONGS):
            rng = np.random.default_rng([self.seed, start])
            for s in range(start, min(self.n, start + BATCH_SONGS)):
                work = int(self.work_of[s])
                chunks = self.version(rng, work, int(self.n_chunks[s])).astype(np.float16)
                yield SongEntry(f"w{work}/s{s}", f"w{work}", f"s{s}", chunks, {"title": f"song {s}"})

    def queries(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, 2**31])
        works = rng.integers(self.n_works, size=n)
        return [self.version(rng, int(w), int(3 + rng.binomial(17, 0.35))).astype(np.float16) for w in works]


# ---------------------------------------------------------------- steps


def build(directory: Path, cat: Catalogue, args: argparse.Namespace) -> float:
    from wealy_cli.core import ui
    from wealy_cli.retrieval.index import append_songs, new_manifest
    from wealy_cli.retrieval.options import IndexKindOptions

    ui.set_quiet(not args.progress)
    params = IndexKindOptions(kind=args.kind, nprobe=args.nprobe, ef_search=args.ef_search, opq=not args.no_opq)
    start = time.perf_counter()
    manifest = new_manifest(DIM, params, {"model": {}, "chunk": 1500, "overlap": 0.9, "topk": 1, "features": {}})
    append_songs(directory, cat.songs(), cat.n, manifest, threads=args.threads)
    return time.perf_counter() - start


def rss_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def search_child(directory: Path, queries_file: Path, args: argparse.Namespace) -> dict:
    """Runs in its own process: memory is the search's alone."""
    from wealy_cli.core import ui
    from wealy_cli.retrieval.index import Index
    from wealy_cli.retrieval.options import SearchOptions
    from wealy_cli.retrieval.search import Searcher

    ui.set_quiet(True)
    before = rss_mb()
    start = time.perf_counter()
    index = Index(directory)
    searcher = Searcher(index, SearchOptions(top=10, probe=args.probe, threads=args.threads, nprobe=args.nprobe,
                                             ef_search=args.ef_search))
    opened = time.perf_counter() - start
    loaded = rss_mb()
    data = np.load(queries_file)
    queries = np.split(data["chunks"], np.cumsum(data["counts"])[:-1])
    for q in queries[: args.warmup]:
        searcher.search(q, "warmup")
    times, tops, candidates = [], [], []
    for q in queries[args.warmup:]:
        t = time.perf_counter()
        result = searcher.search(q, "q")
        times.append(time.perf_counter() - t)
        tops.append([h.song for h in result.hits])
        candidates.append(result.candidates)
    return {"open_s": opened, "rss_before": before, "rss_loaded": loaded, "rss_after": rss_mb(),
            "times": times, "tops": tops, "candidates": candidates, "probe": searcher.probe()}


def exact_top10(directory: Path, queries: list[np.ndarray], block: int = 1 << 16) -> np.ndarray:
    """True top-10 song numbers of each query (topk 1: 1 − the largest chunk-pair cosine),
    streaming the float16 vectors once; all queries' chunks in one matrix product per block."""
    from wealy_cli.retrieval.index import Index, as_unit_float32

    index = Index(directory)
    q = as_unit_float32(np.concatenate(queries))
    firsts = np.concatenate([[0], np.cumsum([len(x) for x in queries])[:-1]])
    best_sim = np.full((len(queries), 10), -np.inf, np.float32)
    best_song = np.full((len(queries), 10), -1, np.int64)
    song = 0
    while song < index.n_songs:  # blocks of whole songs
        stop = int(np.searchsorted(index.offsets, index.offsets[song] + block, side="right")) - 1
        stop = max(stop, song + 1)
        a, b = int(index.offsets[song]), int(index.offsets[stop])
        sims = q @ as_unit_float32(index.vectors[a:b]).T  # (query chunks, rows)
        per_query = np.maximum.reduceat(sims, firsts, axis=0)  # (queries, rows): best over the query's chunks
        del sims
        per_song = np.maximum.reduceat(per_query, index.offsets[song:stop] - a, axis=1)  # (queries, songs)
        merged_sim = np.concatenate([best_sim, per_song], axis=1)
        merged_song = np.concatenate([best_song, np.broadcast_to(np.arange(song, stop), per_song.shape)], axis=1)
        keep = np.argsort(-merged_sim, axis=1, kind="stable")[:, :10]
        best_sim = np.take_along_axis(merged_sim, keep, axis=1)
        best_song = np.take_along_axis(merged_song, keep, axis=1)
        song = stop
    return best_song


def disk_mb(directory: Path) -> dict[str, float]:
    sizes = {p.name: p.stat().st_size / 2**20 for p in directory.iterdir() if p.is_file()}
    faiss_mb = sum(v for k, v in sizes.items() if k.endswith(".faiss"))
    return {"total": sum(sizes.values()), "faiss": faiss_mb, "vectors": sizes.get("vectors.f16", 0.0)}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=100_000)
    parser.add_argument("--kind", default="ivf-pq", choices=["ivf-pq", "hnsw", "flat"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--probe", type=int, default=100)
    parser.add_argument("--nprobe", type=int, default=128)
    parser.add_argument("--no-opq", action="store_true", help="ivf-pq without the OPQ rotation")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="search an index already built in --dir")
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(search_child(args.dir / "index", args.child, args)))
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="wealy-search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    directory = work / "index"
    cat = Catalogue(args.songs)
    try:
        if not args.reuse:
            shutil.rmtree(directory, ignore_errors=True)
            build_s = build(directory, cat, args)
        else:
            build_s = float("nan")
        sizes = disk_mb(directory)
        queries = cat.queries(args.queries + args.warmup)
        qfile = work / "queries.npz"
        np.savez(qfile, chunks=np.concatenate(queries), counts=[len(q) for q in queries])
        child = subprocess.run([sys.executable, __file__, "--child", str(qfile), "--dir", str(work),
                                "--probe", str(args.probe), "--threads", str(args.threads),
                                "--nprobe", str(args.nprobe), "--ef-search", str(args.ef_search),
                                "--queries", str(args.queries), "--warmup", str(args.warmup)],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        res = json.loads(child.stdout.strip().splitlines()[-1])
        exact_start = time.perf_counter()
        truth_file = work / f"truth-{args.songs}-{args.queries}-{args.warmup}.npy"  # per catalogue and queries
        if args.reuse and truth_file.is_file():
            truth = np.load(truth_file)
        else:
            truth = exact_top10(directory, queries[args.warmup:])
            np.save(truth_file, truth)
        exact_s = time.perf_counter() - exact_start
        recall = float(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth.tolist(), res["tops"])]))
        ms = np.array(res["times"]) * 1000
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        memory = res["rss_after"]["VmRSS"]
        from wealy_cli.retrieval.index import Index

        manifest = Index(directory).manifest
        print(f"kind {args.kind} ({json.dumps(manifest['params'])}), {manifest['songs']} songs, "
              f"{manifest['chunks']} chunks, threads {args.threads or os.cpu_count()}")
        print(f"build {build_s:.1f} s; on disk {sizes['total']:.0f} MB (faiss {sizes['faiss']:.0f} MB, "
              f"float16 vectors {sizes['vectors']:.0f} MB)")
        print(f"open {res['open_s']:.2f} s; RSS MB before/loaded/after queries: "
              f"{res['rss_before']['VmRSS']:.0f}/{res['rss_loaded']['VmRSS']:.0f}/{memory:.0f} "
              f"(after: anon {res['rss_after'].get('RssAnon', 0):.0f}, file {res['rss_after'].get('RssFile', 0):.0f}, "
              f"peak {res['rss_after'].get('VmHWM', 0):.0f})")
        print(f"queries {len(ms)} (+{args.warmup} warm-up), probe {res['probe']}, candidate songs median "
              f"{np.median(res['candidates']):.0f}; latency ms p50 {p50:.1f}, p90 {np.percentile(ms, 90):.1f}, "
              f"p99 {p99:.1f}, max {ms.max():.1f}; exact reference {exact_s:.0f} s")
        print(f"search: {args.songs} songs, recall@10 {recall:.3f}, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"memory {memory:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
            (work / "queries.npz").unlink(missing_ok=True)
            for truth_file in work.glob("truth-*.npy"):
                truth_file.unlink()
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
