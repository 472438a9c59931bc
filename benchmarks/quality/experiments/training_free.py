"""(a) transcription baselines and (b) training-free late interaction, on val and test.

(a) reads the matrices written by `wealy baselines --save-distances` (ROOT/baselines/<split>/)
and scores them with common.score (95 % intervals with ddof = 1).
(b) computes late-interaction variants (late_interaction.py) over the decoder rows. Every
variant is scored on val AND test and recorded, but choices are made on val only: the
'selection' step at the end picks the best val variant of each family and prints its test.

    python training_free.py baselines
    python training_free.py li
    python training_free.py rerank
"""

from __future__ import annotations

import sys
import time

import numpy as np
from common import ROOT, load, load_matrix, record, save_matrix, score, score_pessimistic, tied_relevant_fraction
from late_interaction import LIOptions, li_distances, mean_pooled_distances, rerank

from wealy_cli.ranking.matrixfile import read_matrix

BASELINES = ["bm25", "tfidf-cosine", "tfidf-lucene", "sbert", "random", "modified-ideal"]


def baselines() -> None:
    for name in BASELINES:
        results = {}
        ties = {}
        for split_name in ("val", "test"):
            split = load(split_name)
            m = read_matrix(ROOT / "baselines" / split_name / f"{name}_distances.npz")
            pos = {k: i for i, k in enumerate(m.query_keys)}
            idx = np.array([pos[k] for k in split.keys])
            d = m.distances[np.ix_(idx, idx)]
            results[split_name] = score(d, split)
            ties[split_name] = round(tied_relevant_fraction(d, split), 4)
            save_matrix(name, split, d)
        record("baselines", name, results, tied_relevant_fraction=ties,
               pessimistic_ties={k: score_pessimistic(load_matrix(name, load(k)), load(k)).to_dict() for k in results})


VARIANTS = [
    # rows
    LIOptions(rows="all", centre="none"),
    LIOptions(rows="all", centre="train"),
    LIOptions(rows="generated", centre="train"),
    LIOptions(rows="text", centre="none"),
    LIOptions(rows="text", centre="train"),  # DESIGN §10's training-free distance
    LIOptions(rows="text", centre="split"),
    # symmetrisation
    LIOptions(sym="max"),
    LIOptions(sym="min"),
    LIOptions(sym="shorter"),
    LIOptions(sym="longer"),
    # soft top fraction
    LIOptions(top=0.75),
    LIOptions(top=0.5),
    LIOptions(top=0.25),
    LIOptions(sym="shorter", top=0.75),
    # IDF weighting
    LIOptions(idf=True),
    LIOptions(idf=True, top=0.5),
    LIOptions(idf=True, sym="shorter"),
]


def li() -> None:
    train = load("train")
    for split_name in ("val", "test"):
        load(split_name)
    for name, rows in (("mean-pooled all rows", "all"), ("mean-pooled text rows", "text")):
        scores = {s: score(mean_pooled_distances(load(s), rows), load(s)) for s in ("val", "test")}
        record("training_free", name, scores)
    for opts in VARIANTS:
        results, t0 = {}, time.process_time()
        for split_name in ("val", "test"):
            split = load(split_name)
            name = "li-" + opts.label().replace(" ", "_").replace("=", "-")
            try:  # computed before: rescore the kept matrix
                d = load_matrix(name, split)
            except FileNotFoundError:
                d = li_distances(split, opts, train)
                save_matrix(name, split, d)
            results[split_name] = score(d, split)
        record("training_free", "LI " + opts.label(), results, options=opts.__dict__,
               cpu_seconds=round(time.process_time() - t0, 1))


def rerank_bm25(li_name: str = "li-rows-text_centre-train_sym-mean") -> None:
    for top_n in (5, 10, 20, 40):
        results = {}
        for split_name in ("val", "test"):
            split = load(split_name)
            d = rerank(load_matrix("bm25", split), load_matrix(li_name, split), top_n)
            results[split_name] = score(d, split)
        record("training_free", f"BM25 top-{top_n} re-ranked by {li_name}", results, top_n=top_n)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "li"
    {"baselines": baselines, "li": li, "rerank": lambda: rerank_bm25(*sys.argv[2:3])}[what]()
