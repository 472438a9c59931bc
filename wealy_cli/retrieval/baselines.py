"""Transcription baselines and oracle bounds: all-against-all distances on a split.

Every baseline turns the versions' transcriptions (or only their cliques) into an n × n distance
matrix, smaller = closer; the metrics are then the same as for a trained model.

- ``sbert``: all-MiniLM-L6-v2 sentence embeddings; distance = 1 − cosine.
- ``tfidf-cosine``: TF-IDF of 1–2-grams (English stop words, ≤ 10,000 features, min_df 2,
  max_df 0.95); distance = 1 − cosine.
- ``tfidf-lucene``: "more like this": the query keeps only its 12 highest TF-IDF terms (ties by
  term index); distance = 1 − cosine between that truncated query and each full candidate vector.
- ``bm25``: Okapi BM25 (bm25s, Lucene variant, k1 1.5, b 0.75); every transcription is a query
  made of its distinct words; distance = 1 − score / (the row's highest score), so 0 is the best
  match of that query and 1 is no shared word.
- ``ideal``: 0 within a clique, 1 across cliques (MAP 1).
- ``random``: uniform in [0, 1), seeded.
- ``modified-ideal``: random, except 0 for same-clique candidates with a valid transcription
  (the best a lyrics method could do if it were perfect whenever the candidate has lyrics).
- ``modified-random``: 1 + random, except random alone for same-clique pairs where *both*
  transcriptions are valid (original definition: lyrics matching perfect for those pairs, chance
  elsewhere).

Validity is ``transcripts.is_valid``. Annotations ("[Music]") are removed before TF-IDF, BM25 and
SBERT. An empty transcription is at the largest distance the baseline can give (1, or 2 for
SBERT) from everything: its ranking is one big tie, scored by the metrics' tie rule (by default
the expected value over tie orders, i.e. chance).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from wealy_cli.core import ui
from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.store import Store
from wealy_cli.ranking.matrixfile import DistanceMatrix, MatrixFormat, write_matrix
from wealy_cli.retrieval.options import BASELINES, BaselineOptions, BaselinesRun
from wealy_cli.whisper.lyrics import ValidityRules, clean, is_valid
from wealy_cli.whisper.options import DEFAULT_SBERT
from wealy_cli.whisper.sbert import load_sentence_model


@dataclass
class TfidfOptions:
    ngram_range: tuple[int, int] = (1, 2)
    stop_words: str | None = "english"
    max_features: int | None = 10_000
    min_df: int | float = 2
    max_df: int | float = 0.95


TFIDF = TfidfOptions()  # the paper's TF-IDF (DESIGN §7)
VALIDITY = ValidityRules()  # the original rules for modified-* baselines


@dataclass
class Corpus:
    """The versions of a split with their transcriptions, in matrix order."""

    keys: list[str]
    cliques: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def valid(self, rules: ValidityRules = VALIDITY) -> np.ndarray:
        return np.array([is_valid(t, rules) for t in self.texts], dtype=bool)


# ---------------------------------------------------------------- text baselines


def tfidf_matrix(texts: Sequence[str], opts: TfidfOptions = TFIDF) -> sp.csr_matrix:
    """L2-normalised TF-IDF rows of the cleaned texts (scikit-learn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(lowercase=True, ngram_range=tuple(opts.ngram_range),
                                 stop_words=opts.stop_words, max_features=opts.max_features,
                                 min_df=opts.min_df, max_df=opts.max_df)
    try:
        return vectorizer.fit_transform([clean(t) for t in texts]).tocsr()
    except ValueError as err:  # empty vocabulary, or min_df/max_df leave nothing on a tiny corpus
        raise UserError(f"TF-IDF cannot be computed on these {len(texts)} transcriptions: {err}") from err


def tfidf_cosine_distances(texts: Sequence[str], opts: TfidfOptions = TFIDF) -> np.ndarray:
    x = tfidf_matrix(texts, opts)
    return _one_minus(x @ x.T)


def tfidf_lucene_distances(texts: Sequence[str], opts: TfidfOptions = TFIDF,
                           terms: int = 12) -> np.ndarray:
    x = tfidf_matrix(texts, opts)
    q = _top_terms(x, terms)
    # Cosine: the query is re-normalised after truncation; the candidates are already unit rows.
    norms = np.sqrt(np.asarray(q.multiply(q).sum(axis=1))).ravel()
    q = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ q
    return _one_minus(q @ x.T)


def _top_terms(x: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row keeps its k largest entries (ties: lower column index first)."""
    rows, cols, vals = [], [], []
    for i in range(x.shape[0]):
        start, stop = x.indptr[i], x.indptr[i + 1]
        c, v = x.indices[start:stop], x.data[start:stop]
        keep = np.lexsort((c, -v))[:k]
        rows.append(np.full(len(keep), i))
        cols.append(c[keep])
        vals.append(v[keep])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=x.shape)


def _one_minus(similarity: sp.spmatrix | np.ndarray) -> np.ndarray:
    dense = similarity.toarray() if sp.issparse(similarity) else np.asarray(similarity)
    return np.clip(1.0 - dense, 0.0, None).astype(np.float32)  # no -1e-7 from rounding


def bm25_distances(texts: Sequence[str], k1: float = 1.5, b: float = 0.75,
                   on_row: Callable[[], None] | None = None) -> np.ndarray:
    """1 − BM25 score / row maximum; every text queries with its distinct words."""
    import bm25s

    docs = bm25s.tokenize([clean(t) for t in texts], stopwords="en", return_ids=False, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(docs, show_progress=False)
    out = np.ones((len(docs), len(docs)), dtype=np.float32)
    for i, words in enumerate(docs):
        query = list(dict.fromkeys(words))
        if query:
            scores = retriever.get_scores(query)
            top = float(scores.max())
            if top > 0:
                out[i] = 1.0 - scores / top
        if on_row:
            on_row()
    return out


def sbert_distances(texts: Sequence[str], model: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    cleaned = [clean(t) for t in texts]
    encoder = load_sentence_model(str(model) if model else DEFAULT_SBERT, device="cpu", option="--sbert-model")
    emb = encoder.encode(cleaned, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False).astype(np.float32)
    out = np.clip(1.0 - emb @ emb.T, 0.0, 2.0)
    empty = np.array([not t.strip() for t in cleaned])
    out[empty, :] = 2.0  # the largest cosine distance: an empty text matches nothing
    out[:, empty] = 2.0
    return out.astype(np.float32)


# ---------------------------------------------------------------- oracle bounds


def _same_clique(cliques: Sequence[str]) -> np.ndarray:
    _, ids = np.unique(np.asarray(cliques, dtype=str), return_inverse=True)
    return ids[:, None] == ids[None, :]


def ideal_distances(cliques: Sequence[str]) -> np.ndarray:
    return np.where(_same_clique(cliques), 0.0, 1.0).astype(np.float32)


def random_distances(n: int, seed: int = 42) -> np.ndarray:
    return np.random.default_rng(seed).random((n, n), dtype=np.float32)


def modified_ideal_distances(cliques: Sequence[str], valid: np.ndarray, seed: int = 42) -> np.ndarray:
    d = random_distances(len(cliques), seed)
    d[_same_clique(cliques) & np.asarray(valid, bool)[None, :]] = 0.0
    return d


def modified_random_distances(cliques: Sequence[str], valid: np.ndarray, seed: int = 42) -> np.ndarray:
    valid = np.asarray(valid, bool)
    matched = _same_clique(cliques) & valid[:, None] & valid[None, :]
    return random_distances(len(cliques), seed) + np.where(matched, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- dispatch


def baseline_distances(name: str, corpus: Corpus, opts: BaselineOptions | None = None,
                       on_row: Callable[[], None] | None = None) -> np.ndarray:
    """The n × n distance matrix of baseline ``name`` on ``corpus`` (rows = columns = versions)."""
    opts = opts or BaselineOptions()
    if name == "sbert":
        return sbert_distances(corpus.texts, opts.sbert_model, opts.sbert_batch_size)
    if name == "tfidf-cosine":
        return tfidf_cosine_distances(corpus.texts, TFIDF)
    if name == "tfidf-lucene":
        return tfidf_lucene_distances(corpus.texts, TFIDF, opts.lucene_terms)
    if name == "bm25":
        return bm25_distances(corpus.texts, opts.bm25_k1, opts.bm25_b, on_row)
    if name == "ideal":
        return ideal_distances(corpus.cliques)
    if name == "random":
        return random_distances(len(corpus), opts.seed)
    if name == "modified-ideal":
        return modified_ideal_distances(corpus.cliques, corpus.valid(VALIDITY), opts.seed)
    if name == "modified-random":
        return modified_random_distances(corpus.cliques, corpus.valid(VALIDITY), opts.seed)
    raise UserError(f"--compute: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


# ---------------------------------------------------------------- a run over a split


def corpus_from_store(store: Store, keys: Sequence[str], cliques: Sequence[str]) -> Corpus:
    """Transcriptions (item attribute ``text``; missing → empty) of ``keys`` from a store."""
    texts = []
    for key in keys:
        text = store.attrs(key).get("text", "") if key in store else ""
        texts.append(text if isinstance(text, str) else "")
    return Corpus(list(keys), list(cliques), texts)


def comparison_table(results: dict[str, dict]) -> str:
    """Plain-text table of the metrics of every baseline (``comparison_table.txt``)."""
    rows = [("baseline", "MAP", "MR1", "ARP (%)", "queries")]
    rows += [(name, f"{m['map']:.4f} ± {m['map_ci']:.4f}", f"{m['mr1']:.2f} ± {m['mr1_ci']:.2f}",
              f"{m['arp']:.3f} ± {m['arp_ci']:.3f}", str(m["n_queries"])) for name, m in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    rules = sorted({str(m.get("ties", "expected")) for m in results.values()})
    lines.append(f"ties: {', '.join(rules)} (see the metrics' tie rule)")
    return "\n".join(lines) + "\n"


MATRIX_SUFFIX = {"npz": ".npz", "hdf5": ".h5", "pickle": ".pkl"}


def run_baselines(corpus: Corpus, names: Sequence[str], out_dir: Path, opts: BaselineOptions | None = None,
                  save_format: MatrixFormat | None = None, info: dict | None = None) -> dict[str, dict]:
    """Compute every baseline in ``names``, evaluate it, write ``baseline_results.json`` and
    ``comparison_table.txt`` (and ``<name>_distances.<ext>`` when ``save_format`` is given)."""
    from wealy_cli.ranking.metrics import retrieval_metrics  # torch: imported when needed

    opts = opts or BaselineOptions()

    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with ui.progress() as bar:
        task = bar.add_task("baselines", total=len(names), status="")
        for name in names:
            bar.update(task, status=name)
            d = baseline_distances(name, corpus, opts)
            metrics = retrieval_metrics(d, corpus.cliques, corpus.cliques, corpus.keys, corpus.keys, ties=opts.ties)
            results[name] = metrics.to_dict()
            if save_format:
                meta = {"baseline": name, "seed": opts.seed, **(info or {})}
                write_matrix(out_dir / f"{name}_distances{MATRIX_SUFFIX[save_format]}",
                             DistanceMatrix.square(d, corpus.keys, corpus.cliques, meta), save_format)
            bar.advance(task)
    valid = corpus.valid(VALIDITY)
    payload = {"corpus": {**(info or {}), "versions": len(corpus), "cliques": len(set(corpus.cliques)),
                          "valid_transcriptions": int(valid.sum())},
               "results": results}
    (out_dir / "baseline_results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (out_dir / "comparison_table.txt").write_text(comparison_table(results), encoding="utf-8")
    return results


def run_split_baselines(run: BaselinesRun) -> tuple[dict[str, dict], int]:
    """``wealy baselines``: the split's transcriptions from the store, every baseline of
    ``run.compute``, results written to ``run.output``; returns (results, versions)."""
    store = Store(run.store)
    full = load_split(run.dataset, run.split, run.metadata, check_audio=False)
    kept = full.restrict(store.keys())
    if len(kept) == 0:
        raise UserError(f"--store {run.store}: none of the {len(full)} versions of {run.dataset}/{run.split} is "
                        "in the store (with ≥ 2 per clique)")
    if len(kept) < len(full):
        ui.console.print(f"{len(full) - len(kept)} of {len(full)} versions are not in the store "
                         "(or lost their clique partner): left out")
    corpus = corpus_from_store(store, kept.keys, kept.cliques)
    info = {"dataset": run.dataset, "split": run.split, "store": str(run.store)}
    results = run_baselines(corpus, run.compute, run.output, run, run.distance_format if run.save_distances else None,
                            info)
    return results, len(corpus)
