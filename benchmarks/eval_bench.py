"""Exact all-against-all MAP/MR1/ARP at Discogs-VI and SHS100K test scale, against the floor.

    .venv/bin/python benchmarks/eval_bench.py                 # both scenarios (long: the full N² work)
    .venv/bin/python benchmarks/eval_bench.py --n 20000       # a smaller Discogs-VI-like run
    .venv/bin/python benchmarks/eval_bench.py --only shs

Synthetic L2-normalised 512-d embeddings: clique centre + noise, clique sizes heavy-tailed
(median 2-3, mean ~12, like Discogs-VI test: 116,197 versions in 9,878 cliques). The floor is
the time of the bare float32 matrix products of the same N × N (all rows against all columns,
nothing else); the ratio is ours / floor (below 1 is possible: the tiles use the symmetry).
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from wealy_cli.core import ui
from wealy_cli.ranking.tiles import SongSet, all_against_all

DIM = 512


def clique_sizes(rng: np.random.Generator, n: int, mean: float = 11.8, largest: int = 1000) -> np.ndarray:
    """Sizes 2..largest from a power law p(s) ∝ s^-a, a chosen so that the mean is ``mean``
    (median 2-3, like Discogs-VI), then trimmed to sum to n."""
    s = np.arange(2, largest + 1, dtype=np.float64)
    lo, hi = 1.0, 4.0
    for _ in range(60):  # bisection on the exponent
        a = (lo + hi) / 2
        p = s ** -a
        lo, hi = (a, hi) if (s * p).sum() / p.sum() > mean else (lo, a)
    sizes = rng.choice(s.astype(np.int64), size=int(2 * n / mean), p=p / p.sum())
    sizes = sizes[np.cumsum(sizes) <= n]
    rest = int(n - sizes.sum())
    if rest >= 2:
        sizes = np.append(sizes, rest)
    elif rest:
        sizes[0] += rest
    return sizes


def synthetic(n: int, chunks: int, seed: int = 0,
              signal: float = 0.035) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = clique_sizes(rng, n)
    cliques = np.repeat(np.arange(len(sizes)), sizes)
    centre = rng.standard_normal((len(sizes), DIM)).astype(np.float32)
    emb = []
    for start in range(0, n, 8192):  # in pieces: keeps the peak low
        c = cliques[start:start + 8192]
        strength = rng.uniform(0, signal, (len(c), 1, 1)).astype(np.float32)  # easy and hard versions
        noise = rng.standard_normal((len(c), chunks, DIM)).astype(np.float32) / np.sqrt(DIM)
        x = centre[c][:, None, :] * strength + noise
        x /= np.linalg.norm(x, axis=2, keepdims=True)
        emb.extend(x.astype(np.float16))
    return emb, [str(c) for c in cliques], sizes


def floor_seconds(songs: SongSet, step: int = 2048) -> float:
    """Bare products of every chunk row against every chunk row (float32), in row blocks."""
    x = torch.cat([t.chunks[t.valid] for t in songs.tiles])
    start = time.perf_counter()
    for i in range(0, len(x), step):
        x[i:i + step] @ x.T
    return time.perf_counter() - start


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def scenario(name: str, n: int, chunks: int, topks: list[int]) -> None:
    t0 = time.perf_counter()
    emb, cliques, sizes = synthetic(n, chunks)
    songs = SongSet(emb, cliques)
    del emb
    setup = time.perf_counter() - t0
    print(f"\n{name}: N={n} versions, {len(sizes)} cliques (size median {statistics.median(sizes):g}, "
          f"mean {sizes.mean():.1f}, max {sizes.max()}), {chunks} chunk(s) each, dim {DIM}; "
          f"setup {setup:.1f} s", flush=True)
    floor = floor_seconds(songs)
    print(f"  floor (bare float32 products, {n * chunks}² × {DIM}): {floor:.1f} s", flush=True)
    for k in topks:
        start = time.perf_counter()
        m = all_against_all(songs, k)
        took = time.perf_counter() - start
        print(f"  topk {k}: {took:.1f} s, ratio to floor {took / floor:.2f}, peak RSS {peak_gb():.2f} GB; "
              f"MAP {m.map:.4f} ± {m.map_ci:.4f}, MR1 {m.mr1:.1f}, ARP {m.arp:.3f} %, queries {m.n_queries}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=116_197, help="versions of the Discogs-VI-like scenario")
    parser.add_argument("--n-shs", type=int, default=10_547, help="versions of the SHS100K-like scenario")
    parser.add_argument("--only", choices=["dvi", "shs"], default=None)
    args = parser.parse_args()
    ui.set_quiet(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "shs"):
        scenario("SHS100K-test-like", args.n_shs, 4, [1, 3])
    if args.only in (None, "dvi"):
        scenario("Discogs-VI-test-like", args.n, 1, [1])


if __name__ == "__main__":
    main()
