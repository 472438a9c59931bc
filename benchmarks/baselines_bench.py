"""Costs of the baselines/fusion side, each against a peer measured in the same run.

1. Reading an n × n distance matrix in the original pickle layout with the restricted unpickler
   (``safepickle``) vs the plain, unsafe ``pickle.loads``; and wealy's .npz / HDF5 files.
2. The text baselines on N synthetic lyric-like transcriptions (seconds per baseline).
3. Fusion: seconds per weight of the grid vs one plain ``retrieval_metrics`` call on m1.

Medians of --repeats runs.

    python benchmarks/baselines_bench.py --matrix 3000 --texts 1000 --repeats 3 [--sbert]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from wealy_cli.core import ui
from wealy_cli.core.safepickle import safe_loads
from wealy_cli.ranking.fusion import align, fuse_grid
from wealy_cli.ranking.matrixfile import DistanceMatrix, read_matrix, to_original_layout, write_matrix
from wealy_cli.ranking.metrics import retrieval_metrics
from wealy_cli.retrieval.baselines import Corpus, baseline_distances


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def square(n: int, seed: int) -> DistanceMatrix:
    rng = np.random.default_rng(seed)
    cliques = [str(i // 4) for i in range(n)]
    keys = [f"{c}/{i}" for i, c in enumerate(cliques)]
    same = np.equal.outer(np.array(cliques), np.array(cliques))
    return DistanceMatrix.square(np.where(same, 0.4, 1.0) + rng.random((n, n)), keys, cliques)


def texts(n: int, seed: int = 0) -> Corpus:
    """Cliques of 4 versions: each version keeps ~30 % of its song's 120 words, plus 60 noise
    words, from a 600-word vocabulary (so songs share many words)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(600)]
    out, cliques = [], []
    for i in range(n):
        song = np.random.default_rng(i // 4).choice(vocab, 120)
        keep = song[rng.random(120) < 0.3]
        noise = rng.choice(vocab, 60)
        out.append(" ".join(np.concatenate([keep, noise])))
        cliques.append(str(i // 4))
    return Corpus([f"{c}/{i}" for i, c in enumerate(cliques)], cliques, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--matrix", type=int, default=3000)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--alphas", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sbert", action="store_true")
    args = parser.parse_args()
    ui.set_quiet(True)

    m = square(args.matrix, 0)
    with tempfile.TemporaryDirectory() as tmp:
        blob = pickle.dumps(to_original_layout(m), protocol=4)
        plain = median_time(lambda: pickle.loads(blob), args.repeats)
        safe = median_time(lambda: safe_loads(blob), args.repeats)
        print(f"[read {args.matrix}x{args.matrix}] pickle.loads {plain * 1e3:.1f} ms, "
              f"safe_loads {safe * 1e3:.1f} ms, ratio safe/plain {safe / plain:.2f}")
        for suffix in (".pkl", ".npz", ".h5"):
            path = write_matrix(Path(tmp) / f"m{suffix}", m)
            t = median_time(lambda p=path: read_matrix(p), args.repeats)
            print(f"[read {args.matrix}x{args.matrix}] read_matrix {suffix}: {t * 1e3:.1f} ms "
                  f"({path.stat().st_size / 2**20:.1f} MiB)")

    corpus = texts(args.texts)
    names = ["tfidf-cosine", "tfidf-lucene", "bm25"] + (["sbert"] if args.sbert else [])
    for name in names:
        t = median_time(lambda n=name: baseline_distances(n, corpus), args.repeats)
        d = baseline_distances(name, corpus)
        quality = retrieval_metrics(d, corpus.cliques, corpus.cliques, corpus.keys, corpus.keys).map
        print(f"[baseline N={args.texts}] {name}: {t:.2f} s (MAP {quality:.3f})")

    m1, m2 = square(args.matrix, 1), square(args.matrix, 2)
    alphas = list(np.linspace(0, 2, args.alphas))
    aligned = align([m1, m2], ["m1", "m2"])
    one = median_time(lambda: retrieval_metrics(m1.distances, m1.query_cliques, m1.candidate_cliques,
                                                m1.query_keys, m1.candidate_keys), args.repeats)
    grid = median_time(lambda: fuse_grid(aligned, alphas), args.repeats)
    print(f"[fusion {args.matrix}x{args.matrix}] {grid / len(alphas):.3f} s per weight vs "
          f"{one:.3f} s per plain metrics call (ratio {grid / len(alphas) / one:.2f})")


if __name__ == "__main__":
    main()
