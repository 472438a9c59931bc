"""Discogs-VI scale in bounded memory: transcription baselines, the WEALY distance matrix written
to HDF5, and the fusion of two such matrices over 21 weights.

    .venv/bin/python benchmarks/scale_bench.py --versions 116197      # Discogs-VI test size
    .venv/bin/python benchmarks/scale_bench.py --versions 5000        # a quick run

Synthetic data shaped like Discogs-VI test: clique sizes from a power law (median 3, mean ~12,
largest ~1000); transcriptions of ~150 words drawn from a Zipfian vocabulary of 30,000 words,
each version a noisy copy of its song (words dropped and replaced, some versions empty or
"[Music]" only: big ties); 384-d unit sentence embeddings and 512-d chunk embeddings around
a clique centre. Steps, each in its own process (its own peak RSS):

- every baseline ranked row block by row block (``retrieval.baselines``): tfidf-cosine (its
  matrix also saved to .h5, the second fusion input), tfidf-lucene, bm25, sbert (the ranking of
  given embeddings: encoding 116k texts with MiniLM on CPU is not part of it), and the oracles;
- ``write_distances`` to .h5 (the real path: a saved model, a feature store, a split CSV and a
  chunk-embedding cache already filled with the synthetic embeddings, so no model runs);
- ``fuse_paths`` of the two .h5 matrices over the weights 0:2:0.1.

Needs 2 · 4 · N² bytes of disk (116,197² float32 is 54 GB per matrix) and refuses to leave less
than 15 GB free; the files are deleted at the end (``--keep`` keeps them). Last line:
``scale: N versions, baselines X s, distances Y s, fuse Z s, peak RSS W GB``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from eval_bench import clique_sizes  # noqa: E402  (same Discogs-VI-like clique sizes)

BASELINE_STEPS = ("tfidf-cosine", "tfidf-lucene", "bm25", "sbert", "ideal", "random", "modified-ideal",
                  "modified-random")
RESERVE = 15 * 2**30  # disk left free for others
VOCABULARY = 30_000


# ---------------------------------------------------------------- synthetic data


def synthetic_cliques(n: int, seed: int = 0) -> list[str]:
    sizes = clique_sizes(np.random.default_rng(seed), n)
    return [f"c{c}" for c, size in enumerate(sizes) for _ in range(size)]


def vocabulary(rng: np.random.Generator, size: int = VOCABULARY) -> np.ndarray:
    """Distinct pronounceable words (consonant-vowel syllables), none an English stop word."""
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.integers(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)) + "x")
    return np.array(sorted(words))


def synthetic_texts(cliques: list[str], seed: int = 0, words_per_song: int = 150) -> list[str]:
    """Each song: Zipfian words; each version: an excerpt of at least 20 words, 40 % of its words
    dropped and 40 % of the rest replaced; 4 % of versions empty and 3 % annotations only (the
    ties real transcriptions have)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.07
    p /= p.sum()
    songs: dict[str, np.ndarray] = {}
    texts = []
    for clique in cliques:
        if clique not in songs:
            songs[clique] = rng.choice(len(vocab), words_per_song, p=p)
        roll = rng.random()
        if roll < 0.04:
            texts.append("")
            continue
        if roll < 0.07:
            texts.append("[Music] [Music]")
            continue
        start, stop = sorted(rng.integers(0, words_per_song + 1, 2))  # an excerpt (live cut, partial lyrics)
        song = songs[clique][start:max(stop, start + 20)]
        words = song[rng.random(len(song)) > 0.4].copy()
        swap = rng.random(len(words)) < 0.4
        words[swap] = rng.choice(len(vocab), int(swap.sum()), p=p)
        texts.append(" ".join(vocab[words]))
    return texts


def clique_embeddings(cliques: list[str], dim: int, seed: int, signal: float) -> np.ndarray:
    """Unit vectors: a clique centre times a per-version strength in [0, signal) plus noise."""
    rng = np.random.default_rng(seed)
    ids = np.unique(np.asarray(cliques), return_inverse=True)[1]
    centre = rng.standard_normal((ids.max() + 1, dim)).astype(np.float32)
    out = np.empty((len(cliques), dim), dtype=np.float32)
    for start in range(0, len(cliques), 8192):  # in pieces: keeps the peak low
        c = ids[start:start + 8192]
        x = (centre[c] * rng.uniform(0, signal, (len(c), 1)).astype(np.float32)
             + rng.standard_normal((len(c), dim)).astype(np.float32) / np.sqrt(dim))
        out[start:start + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def keys_of(cliques: list[str]) -> list[str]:
    return [f"{c}/v{i}" for i, c in enumerate(cliques)]


# ---------------------------------------------------------------- steps (each in its own process)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def step_baseline(name: str, n: int, work: Path) -> dict:
    from wealy_cli.retrieval.baselines import Corpus, baseline_blocks, rank_blocks

    cliques = synthetic_cliques(n)
    corpus = Corpus(keys_of(cliques), cliques, synthetic_texts(cliques))
    embeddings = None
    if name == "sbert":
        empty = np.array([not t or t.startswith("[") for t in corpus.texts])
        embeddings = (clique_embeddings(cliques, 384, seed=1, signal=0.05), empty)
    save = work / f"{name}_distances.h5" if name == "tfidf-cosine" else None
    start = time.perf_counter()
    metrics = rank_blocks(baseline_blocks(name, corpus, embeddings=embeddings), corpus, "expected", save,
                          "hdf5" if save else None, {"baseline": name})
    return {"seconds": time.perf_counter() - start, "map": metrics.map, "arp": metrics.arp}


def step_distances(n: int, work: Path) -> dict:
    """The real ``write_distances`` on a store, a split CSV, a saved model and a filled cache."""
    import torch

    from wealy_cli.core.store import Store, StoreWriter, settings_hash
    from wealy_cli.model.network import ModelConfig, build_model, save_weights
    from wealy_cli.retrieval.evaluate import weights_digest, write_distances
    from wealy_cli.retrieval.options import DistancesRun

    setup = time.perf_counter()
    cliques = synthetic_cliques(n)
    keys = keys_of(cliques)
    (work / "split.csv").write_text("clique,version,path,split\n" + "".join(
        f"{k.replace('/', ',')},{k}.mp3,test\n" for k in keys), encoding="utf-8")
    with StoreWriter(work / "features", 8, settings={"synthetic": True}, shard_items=4096) as writer:
        row = np.zeros((1, 8), np.float16)
        for key in keys:
            writer.add(key, row)
    torch.manual_seed(0)
    cfg = ModelConfig(input_channels=8, hidden_dim=16, zdim=512, num_transformer_blocks=1, num_heads=2,
                      ff_dim=32, dropout=0.0)
    save_weights(work / "model" / "best", build_model(cfg), cfg)
    opts = DistancesRun(store=work / "features", output=work / "wealy.h5", checkpoint=work / "model", dataset="csv",
                        metadata=work / "split.csv", split="test", cache=work / "cache", chunk=1500, overlap=0.9,
                        topk=1)
    cache_settings = {"weights": weights_digest(work / "model"),
                      "features": Store(work / "features").manifest.get("settings_hash"),
                      "chunk": opts.chunk, "overlap": opts.overlap}
    emb = clique_embeddings(cliques, 512, seed=2, signal=0.06).astype(np.float16)
    with StoreWriter(work / "cache" / settings_hash(cache_settings), 512, settings=cache_settings,
                     kind="chunk-embeddings", shard_items=4096) as cache:
        for key, e in zip(keys, emb):
            cache.add(key, e[None])
    del emb
    setup = time.perf_counter() - setup
    start = time.perf_counter()
    write_distances(opts, "hdf5")
    return {"seconds": time.perf_counter() - start, "setup_seconds": setup,
            "file_gb": (work / "wealy.h5").stat().st_size / 2**30}


def step_fuse(work: Path) -> dict:
    from wealy_cli.ranking.fusion import best_row, fuse_paths
    from wealy_cli.ranking.options import parse_alphas

    start = time.perf_counter()
    _, rows = fuse_paths([work / "wealy.h5", work / "tfidf-cosine_distances.h5"], ["wealy", "tfidf"],
                         parse_alphas("0:2:0.1"))
    best = rows[best_row(rows)]
    return {"seconds": time.perf_counter() - start, "weights": len(rows), "best_weight": best.weights[0],
            "best_map": best.metrics["map"], "map_at_0": rows[0].metrics["map"]}


def run_step(step: str, n: int, work: Path) -> dict:
    from wealy_cli.core import ui

    ui.set_quiet(True)
    if step == "distances":
        out = step_distances(n, work)
    elif step == "fuse":
        out = step_fuse(work)
    else:
        out = step_baseline(step, n, work)
    return {**out, "peak_gb": peak_gb()}


# ---------------------------------------------------------------- driver


def child(step: str, n: int, work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--step", step, "--versions", str(n), "--workdir", str(work)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"step {step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=116_197)
    parser.add_argument("--workdir", type=Path, default=None, help="where the .h5 files go [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.versions, args.workdir)))
        return
    n = args.versions
    work = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.workdir))
    need = 2 * 4 * n * n
    free = shutil.disk_usage(work).free
    if free - need < RESERVE:
        largest = int(np.sqrt(max(0, free - RESERVE) / 8))
        shutil.rmtree(work)
        sys.exit(f"{work.parent}: two {n}² float32 matrices need {need / 2**30:.1f} GB and must leave 15 GB of "
                 f"the {free / 2**30:.1f} GB free; the largest N this disk allows is {largest}")
    print(f"N = {n} versions; work folder {work} ({free / 2**30:.0f} GB free, matrices {need / 2**30:.1f} GB)",
          flush=True)
    try:
        results = {}
        for step in (*BASELINE_STEPS, "distances", "fuse"):
            results[step] = child(step, n, work)
            extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in results[step].items()
                     if k not in ("seconds", "peak_gb")}
            print(f"  {step:16s} {results[step]['seconds']:8.1f} s  peak RSS {results[step]['peak_gb']:.2f} GB  "
                  f"{extra}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    baselines = sum(results[s]["seconds"] for s in BASELINE_STEPS)
    peak = max(r["peak_gb"] for r in results.values())
    print(f"scale: {n} versions, baselines {baselines:.0f} s, distances {results['distances']['seconds']:.0f} s, "
          f"fuse {results['fuse']['seconds']:.0f} s, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
