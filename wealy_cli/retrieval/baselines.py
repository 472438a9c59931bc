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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from wealy_cli.core import ui
from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.store import Store
from wealy_cli.ranking.matrixfile import (
    DistanceMatrix,
    MatrixFormat,
    MatrixWriter,
    check_disk_space,
    hdf5_bytes,
    write_matrix,
)
from wealy_cli.retrieval.options import BASELINES, BaselineOptions, BaselinesRun
from wealy_cli.whisper.lyrics import ValidityRules, clean, is_valid
from wealy_cli.whisper.options import DEFAULT_SBERT
from wealy_cli.whisper.sbert import load_sentence_model

if TYPE_CHECKING:  # torch-heavy: imported when a baseline runs, keeping the CLI's start-up fast
    from wealy_cli.ranking.metrics import Metrics

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


# ---------------------------------------------------------------- row blocks

BLOCK_BYTES = 2**26  # distances per row block (64 MB of float32): memory is bounded by this
DENSE_PAIR_SHARE = 0.004  # a term's products go to BLAS when (query share) × (candidate share) exceeds it
DENSE_BYTES = 2**28  # at most this much memory for the BLAS part of a sparse product

RowBlocks = Iterator[tuple[int, np.ndarray]]  # (first row, float32 block of whole rows)


def rows_per_block(n_candidates: int, block_bytes: int = BLOCK_BYTES) -> int:
    return max(1, block_bytes // (4 * max(1, n_candidates)))


class SparseProduct:
    """Rows of Q @ C.T for sparse Q (n_q × F) and C (n_c × F), by blocks of query rows, never the
    whole product. Terms frequent on both sides (shares whose product exceeds
    ``DENSE_PAIR_SHARE``) are multiplied densely (BLAS), the rest sparsely (scipy): a term in
    half of the documents makes a quarter of all pairs, which BLAS does far faster."""

    def __init__(self, queries: sp.csr_matrix, candidates: sp.csr_matrix, dense_bytes: int = DENSE_BYTES) -> None:
        queries, candidates = sp.csr_matrix(queries, dtype=np.float64), sp.csr_matrix(candidates, dtype=np.float64)
        n_q, n_c = queries.shape[0], candidates.shape[0]
        share_q = np.bincount(queries.indices, minlength=queries.shape[1]) / max(1, n_q)
        share_c = np.bincount(candidates.indices, minlength=candidates.shape[1]) / max(1, n_c)
        weight = share_q * share_c
        dense = np.flatnonzero(weight > DENSE_PAIR_SHARE)
        dense = dense[np.argsort(-weight[dense], kind="stable")][:max(0, dense_bytes // (8 * max(1, n_c)))]
        sparse_cols = np.setdiff1d(np.arange(queries.shape[1]), dense)
        self.shape = (n_q, n_c)
        self.q_dense = queries[:, dense].tocsr()
        self.c_dense_t = np.ascontiguousarray(candidates[:, dense].toarray().T)  # (K, n_c)
        self.q_sparse = queries[:, sparse_cols].tocsr()
        self.c_sparse_t = candidates[:, sparse_cols].T.tocsr()  # (F − K, n_c)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float64 (stop − start, n_c): rows start..stop of Q @ C.T."""
        out = self.q_dense[start:stop].toarray() @ self.c_dense_t
        out += (self.q_sparse[start:stop] @ self.c_sparse_t).toarray()
        return out


def _similarity_blocks(product: SparseProduct, block_rows: int) -> RowBlocks:
    """1 − similarity, clipped at 0 (no −1e-7 from rounding), float32."""
    for start in range(0, product.shape[0], block_rows):
        stop = min(start + block_rows, product.shape[0])
        yield start, np.clip(1.0 - product.rows(start, stop), 0.0, None).astype(np.float32)


def _dense(n: int, blocks: RowBlocks) -> np.ndarray:
    out = np.empty((n, n), dtype=np.float32)
    for start, block in blocks:
        out[start:start + len(block)] = block
    return out


# ---------------------------------------------------------------- text baselines


def tfidf_matrix(texts: Sequence[str], opts: TfidfOptions | None = None) -> sp.csr_matrix:
    """L2-normalised TF-IDF rows of the cleaned texts (scikit-learn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    opts = opts or TFIDF
    vectorizer = TfidfVectorizer(lowercase=True, ngram_range=tuple(opts.ngram_range),
                                 stop_words=opts.stop_words, max_features=opts.max_features,
                                 min_df=opts.min_df, max_df=opts.max_df)
    try:
        return vectorizer.fit_transform([clean(t) for t in texts]).tocsr()
    except ValueError as err:  # empty vocabulary, or min_df/max_df leave nothing on a tiny corpus
        raise UserError(f"TF-IDF cannot be computed on these {len(texts)} transcriptions: {err}") from err


def tfidf_cosine_blocks(texts: Sequence[str], opts: TfidfOptions | None = None,
                        block_rows: int | None = None) -> RowBlocks:
    """Row blocks of 1 − cosine between TF-IDF rows."""
    x = tfidf_matrix(texts, opts)
    return _similarity_blocks(SparseProduct(x, x), block_rows or rows_per_block(len(texts)))


def tfidf_lucene_blocks(texts: Sequence[str], opts: TfidfOptions | None = None, terms: int = 12,
                        block_rows: int | None = None) -> RowBlocks:
    """Row blocks of 1 − cosine between each query's top ``terms`` TF-IDF terms and every
    candidate's full TF-IDF row."""
    x = tfidf_matrix(texts, opts)
    q = _top_terms(x, terms)
    # Cosine: the query is re-normalised after truncation; the candidates are already unit rows.
    norms = np.sqrt(np.asarray(q.multiply(q).sum(axis=1))).ravel()
    q = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ q
    return _similarity_blocks(SparseProduct(q, x), block_rows or rows_per_block(len(texts)))


def tfidf_cosine_distances(texts: Sequence[str], opts: TfidfOptions | None = None) -> np.ndarray:
    return _dense(len(texts), tfidf_cosine_blocks(texts, opts))


def tfidf_lucene_distances(texts: Sequence[str], opts: TfidfOptions | None = None, terms: int = 12) -> np.ndarray:
    return _dense(len(texts), tfidf_lucene_blocks(texts, opts, terms))


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


def bm25_matrices(texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(query-term indicators, per-term document scores), both n × vocabulary.

    Words as bm25s tokenises them (English stop words removed); Okapi BM25, Lucene variant:
    score(q, d) = Σ_{t ∈ q, distinct} idf(t) · tf / (tf + k1 · (1 − b + b · |d| / avgdl)),
    idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))."""
    import bm25s

    docs = bm25s.tokenize([clean(t) for t in texts], stopwords="en", return_ids=False, show_progress=False)
    vocab: dict[str, int] = {}
    rows = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    cols = np.array([vocab.setdefault(w, len(vocab)) for d in docs for w in d], dtype=np.int64)
    counts = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(docs), max(1, len(vocab))))
    counts.sum_duplicates()
    length = np.array([len(d) for d in docs], dtype=np.float64)
    avgdl = max(float(length.mean()) if len(docs) else 0.0, 1e-12)
    df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
    idf = np.log(1.0 + (len(docs) - df + 0.5) / (df + 0.5))
    tf = counts.data
    row_of = np.repeat(np.arange(len(docs)), np.diff(counts.indptr))
    scores = counts.copy()
    scores.data = idf[counts.indices] * tf / (tf + k1 * (1.0 - b + b * length[row_of] / avgdl))
    indicators = counts.copy()
    indicators.data = np.ones_like(tf)
    return indicators, scores


def bm25_blocks(texts: Sequence[str], k1: float = 1.5, b: float = 0.75, block_rows: int | None = None) -> RowBlocks:
    """Row blocks of 1 − BM25 score / (the row's highest score); 1 where nothing matches."""
    indicators, scores = bm25_matrices(texts, k1, b)
    product = SparseProduct(indicators, scores)
    step = block_rows or rows_per_block(len(texts))
    for start in range(0, len(texts), step):
        s = product.rows(start, min(start + step, len(texts)))
        top = s.max(axis=1, keepdims=True) if s.shape[1] else np.zeros((len(s), 1))
        out = np.ones(s.shape, dtype=np.float32)
        hit = top[:, 0] > 0
        out[hit] = (1.0 - s[hit] / top[hit]).astype(np.float32)
        yield start, out


def bm25_distances(texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """1 − BM25 score / row maximum; every text queries with its distinct words."""
    return _dense(len(texts), bm25_blocks(texts, k1, b))


def sbert_embeddings(texts: Sequence[str], model: str | Path | None = None, batch_size: int = 64
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Unit SBERT embeddings of the cleaned texts, and which texts are empty."""
    cleaned = [clean(t) for t in texts]
    encoder = load_sentence_model(str(model) if model else DEFAULT_SBERT, device="cpu", option="--sbert-model")
    emb = encoder.encode(cleaned, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False).astype(np.float32)
    return emb, np.array([not t.strip() for t in cleaned], dtype=bool)


def embedding_blocks(emb: np.ndarray, empty: np.ndarray, block_rows: int | None = None) -> RowBlocks:
    """Row blocks of 1 − cosine of unit embeddings, in [0, 2]; an empty text is at 2 (the largest
    cosine distance) from everything: it matches nothing."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    step = block_rows or rows_per_block(len(emb))
    for start in range(0, len(emb), step):
        stop = min(start + step, len(emb))
        out = np.clip(1.0 - emb[start:stop] @ emb.T, 0.0, 2.0)
        out[empty[start:stop], :] = 2.0
        out[:, empty] = 2.0
        yield start, out.astype(np.float32)


def sbert_distances(texts: Sequence[str], model: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    return _dense(len(texts), embedding_blocks(*sbert_embeddings(texts, model, batch_size)))


# ---------------------------------------------------------------- oracle bounds


def _clique_ids(cliques: Sequence[str]) -> np.ndarray:
    return np.unique(np.asarray(cliques, dtype=str), return_inverse=True)[1].ravel()


def _same_clique(ids: np.ndarray, start: int, stop: int) -> np.ndarray:
    return ids[start:stop, None] == ids[None, :]


def random_blocks(n: int, seed: int = 42, block_rows: int | None = None) -> RowBlocks:
    """Uniform [0, 1) rows from one seeded stream, in order: the same values as one n × n draw."""
    rng = np.random.default_rng(seed)
    step = block_rows or rows_per_block(n)
    for start in range(0, n, step):
        yield start, rng.random((min(step, n - start), n), dtype=np.float32)


def ideal_blocks(cliques: Sequence[str], block_rows: int | None = None) -> RowBlocks:
    ids = _clique_ids(cliques)
    step = block_rows or rows_per_block(len(ids))
    for start in range(0, len(ids), step):
        yield start, np.where(_same_clique(ids, start, min(start + step, len(ids))), 0.0, 1.0).astype(np.float32)


def modified_ideal_blocks(cliques: Sequence[str], valid: np.ndarray, seed: int = 42,
                          block_rows: int | None = None) -> RowBlocks:
    ids, valid = _clique_ids(cliques), np.asarray(valid, bool)
    for start, d in random_blocks(len(ids), seed, block_rows):
        d[_same_clique(ids, start, start + len(d)) & valid[None, :]] = 0.0
        yield start, d


def modified_random_blocks(cliques: Sequence[str], valid: np.ndarray, seed: int = 42,
                           block_rows: int | None = None) -> RowBlocks:
    ids, valid = _clique_ids(cliques), np.asarray(valid, bool)
    for start, d in random_blocks(len(ids), seed, block_rows):
        stop = start + len(d)
        matched = _same_clique(ids, start, stop) & valid[start:stop, None] & valid[None, :]
        yield start, d + np.where(matched, 0.0, 1.0).astype(np.float32)


def ideal_distances(cliques: Sequence[str]) -> np.ndarray:
    return _dense(len(cliques), ideal_blocks(cliques))


def random_distances(n: int, seed: int = 42) -> np.ndarray:
    return _dense(n, random_blocks(n, seed))


def modified_ideal_distances(cliques: Sequence[str], valid: np.ndarray, seed: int = 42) -> np.ndarray:
    return _dense(len(cliques), modified_ideal_blocks(cliques, valid, seed))


def modified_random_distances(cliques: Sequence[str], valid: np.ndarray, seed: int = 42) -> np.ndarray:
    return _dense(len(cliques), modified_random_blocks(cliques, valid, seed))


# ---------------------------------------------------------------- dispatch


def baseline_blocks(name: str, corpus: Corpus, opts: BaselineOptions | None = None,
                    block_rows: int | None = None, embeddings: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> RowBlocks:
    """Row blocks (in order) of baseline ``name``'s n × n distance matrix on ``corpus``.
    ``embeddings`` (unit vectors, empty-text mask) replaces encoding the texts for ``sbert``."""
    opts = opts or BaselineOptions()
    if name == "sbert":
        emb = embeddings or sbert_embeddings(corpus.texts, opts.sbert_model, opts.sbert_batch_size)
        return embedding_blocks(*emb, block_rows)
    if name == "tfidf-cosine":
        return tfidf_cosine_blocks(corpus.texts, TFIDF, block_rows)
    if name == "tfidf-lucene":
        return tfidf_lucene_blocks(corpus.texts, TFIDF, opts.lucene_terms, block_rows)
    if name == "bm25":
        return bm25_blocks(corpus.texts, opts.bm25_k1, opts.bm25_b, block_rows)
    if name == "ideal":
        return ideal_blocks(corpus.cliques, block_rows)
    if name == "random":
        return random_blocks(len(corpus), opts.seed, block_rows)
    if name == "modified-ideal":
        return modified_ideal_blocks(corpus.cliques, corpus.valid(VALIDITY), opts.seed, block_rows)
    if name == "modified-random":
        return modified_random_blocks(corpus.cliques, corpus.valid(VALIDITY), opts.seed, block_rows)
    raise UserError(f"--compute: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def baseline_distances(name: str, corpus: Corpus, opts: BaselineOptions | None = None) -> np.ndarray:
    """The whole n × n distance matrix of baseline ``name`` (small corpora; see baseline_blocks)."""
    return _dense(len(corpus), baseline_blocks(name, corpus, opts))


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
                  save_format: MatrixFormat | None = None, info: dict | None = None,
                  block_rows: int | None = None, memory_limit: int | None = None) -> dict[str, dict]:
    """Compute every baseline in ``names`` row block by row block, rank each block as it comes
    (``RankAccumulator``: never an n × n matrix), write ``baseline_results.json`` and
    ``comparison_table.txt``, and ``<name>_distances.<ext>`` when ``save_format`` is given (hdf5
    by row blocks; npz and pickle need the matrix in memory and are refused when it would not
    fit). Disk and memory are checked before any baseline is computed."""
    from wealy_cli.ranking.metrics import check_ties

    opts = opts or BaselineOptions()
    check_ties(opts.ties)
    paths = {name: out_dir / f"{name}_distances{MATRIX_SUFFIX[save_format]}" for name in names} if save_format else {}
    _check_room(paths, len(corpus), save_format, memory_limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with ui.progress() as bar:
        task = bar.add_task("baselines", total=len(names) * len(corpus), status="")
        for name in names:
            bar.update(task, status=name)
            meta = {"baseline": name, "seed": opts.seed, **(info or {})}
            blocks = baseline_blocks(name, corpus, opts, block_rows)
            metrics = rank_blocks(blocks, corpus, opts.ties, paths.get(name), save_format, meta,
                                  lambda rows: bar.advance(task, rows))
            results[name] = metrics.to_dict()
    valid = corpus.valid(VALIDITY)
    payload = {"corpus": {**(info or {}), "versions": len(corpus), "cliques": len(set(corpus.cliques)),
                          "valid_transcriptions": int(valid.sum())},
               "results": results}
    (out_dir / "baseline_results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (out_dir / "comparison_table.txt").write_text(comparison_table(results), encoding="utf-8")
    return results


def rank_blocks(blocks: RowBlocks, corpus: Corpus, ties: str = "expected", path: Path | None = None,
                save_format: MatrixFormat | None = None, metadata: dict | None = None,
                on_rows: Callable[[int], None] | None = None) -> Metrics:
    """Metrics of a matrix given as row blocks (all against all on ``corpus``); each block is
    also written to ``path`` when given."""
    from wealy_cli.ranking.metrics import RankAccumulator

    acc = RankAccumulator(corpus.cliques, corpus.cliques, corpus.keys, corpus.keys, ties=ties)
    keys, cliques = corpus.keys, corpus.cliques
    writer = MatrixWriter(path, keys, keys, cliques, cliques, metadata) if path and save_format == "hdf5" else None
    dense = np.empty((len(corpus), len(corpus)), np.float32) if path and writer is None else None
    try:
        for start, block in blocks:
            acc.add(np.arange(start, start + len(block)), block)
            if writer is not None:
                writer.write(start, block)
            elif dense is not None:
                dense[start:start + len(block)] = block
            if on_rows:
                on_rows(len(block))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    elif dense is not None and path is not None:
        write_matrix(path, DistanceMatrix.square(dense, keys, cliques, metadata), save_format)
    return acc.result()


def _check_room(paths: dict[str, Path], n: int, save_format: MatrixFormat | None, memory_limit: int | None) -> None:
    """Refuse before the work: not enough disk for the .h5 files, or not enough memory for a
    matrix that npz and pickle must hold whole."""
    from wealy_cli.ranking.tiles import available_memory

    if not paths:
        return
    first = next(iter(paths.values()))
    if save_format == "hdf5":
        check_disk_space(first, len(paths) * hdf5_bytes(n, n))
        return
    need = 4 * n * n
    limit = memory_limit if memory_limit is not None else int(0.5 * available_memory())
    if need > limit:
        raise UserError(f"--distance-format {save_format}: a {n}×{n} float32 matrix needs {need / 2**30:.1f} GiB "
                        f"in memory, more than the {limit / 2**30:.1f} GiB allowed (half the available memory); "
                        "use --distance-format hdf5 (written by row blocks)")


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
