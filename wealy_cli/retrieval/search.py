"""Catalogue search: which indexed songs is a query a version of?

    query chunk embeddings ──FAISS──► the ``probe`` nearest indexed chunks of every query chunk
                           ──► their songs (the candidates)
                           ──► exact song distances to each candidate (``tiles.song_distances``:
                               mean of the topk largest chunk-pair cosines, as ``evaluate``)
                           ──► optional fusion with CLEWS song distances (``--alpha``)
                           ──► sorted (ties: index order), the first ``top``

A query is a song of the index (``--key``: its stored chunks, so the ranking is the index's row
of ``wealy distances``), an audio file (extracted with the index's Whisper settings and embedded
with its checkpoint), or chunk embeddings (the benchmark).

With the exact (flat) index and topk 1 the candidates provably hold the true ``top`` songs: a
song ranked r-th has its best chunk pair among the (r − 1)·max_chunks + 1 nearest chunks of
that query chunk (only songs ranked before it can own nearer chunks), so ``probe`` is raised to
(top − 1)·max_chunks + 1. An ANN index (or topk > 1) only proposes candidates; their distances
are still exact.

Fusion (an index built with ``--clews-store``): fused = n(lyrics) + alpha · n(audio), each
normalised as ``wealy fuse`` does with the statistics of the index's all-against-all matrix
(kept at build time; of a random sample of its songs when there are more than
``--fusion-sample``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wealy_cli.core.errors import UserError
from wealy_cli.retrieval.index import Index, IndexFileError, as_unit_float32, configure_search, set_threads
from wealy_cli.retrieval.options import SearchOptions, SearchRun

FUSION_FILE = "fusion.npz"


@dataclass
class Hit:
    rank: int
    song: int  # position in the index
    key: str
    clique: str
    version: str
    distance: float
    meta: dict[str, Any] = field(default_factory=dict)
    lyrics_distance: float | None = None  # when fused: the two song distances before normalisation
    audio_distance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "key": self.key, "clique": self.clique,
                               "distance": _number(self.distance), "version": self.version}
        if self.lyrics_distance is not None:
            out["lyrics_distance"] = _number(self.lyrics_distance)
            out["audio_distance"] = _number(self.audio_distance)
        out["metadata"] = self.meta
        return out


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]
    candidates: int
    seconds: float


def _number(value: float | None) -> float | None:
    """JSON has no infinity: a song without a distance is null."""
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


# ---------------------------------------------------------------- searching


class Searcher:
    """Searches one index; holds its FAISS index and, when fusing, its CLEWS embeddings."""

    def __init__(self, index: Index, opts: SearchOptions) -> None:
        self.index = index
        self.opts = opts
        self.topk = int(opts.topk or index.manifest.get("topk") or 1)
        self.late_fraction = index.manifest.get("model", {}).get("late_fraction")  # a late-interaction index
        set_threads(opts.threads)
        configure_search(index.faiss, index.params, opts.nprobe, opts.ef_search)
        self.clews = None
        self.fusion: dict[str, dict[str, Any]] = {}
        if opts.alpha > 0:
            self.clews, self.fusion = _fusion_parts(index, opts.normalize, self.topk)

    def probe(self) -> int:
        """Chunks fetched per query chunk (raised for the exact guarantee, see the module doc)."""
        probe = self.opts.probe
        if self.index.params.kind == "flat" and self.topk == 1 and self.late_fraction is None:
            probe = max(probe, (self.opts.top - 1) * int(self.index.manifest.get("max_chunks", 1)) + 1)
        return min(probe, self.index.n_chunks)

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """Sorted song numbers owning the nearest chunks of the query's chunks."""
        _, rows = self.index.faiss.search(as_unit_float32(query), self.probe())
        rows = rows[rows >= 0]
        return np.unique(self.index.song_of(rows))

    def search(self, query: np.ndarray, name: str, clews_query: np.ndarray | None = None) -> QueryResult:
        """Rank the index's songs for one query's chunk embeddings (and CLEWS shingles when fusing)."""
        from wealy_cli.ranking.tiles import song_distances_to

        start = time.perf_counter()
        songs = self.candidates(query)
        lyrics = song_distances_to(query, [self.index.chunks(int(s)) for s in songs], self.topk,
                                   late_fraction=self.late_fraction)
        audio = None
        distance = lyrics.astype(np.float64)
        if self.clews is not None:
            if clews_query is None:
                raise UserError(f"{name}: fusing needs the query's CLEWS embeddings (--alpha > 0)")
            audio = self._audio_distances(clews_query, songs)
            distance = self._fused(lyrics, audio)
        order = np.lexsort((songs, distance))[: self.opts.top]
        hits = []
        for rank, i in enumerate(order, 1):
            record = self.index.record(int(songs[i]))
            hits.append(Hit(rank, int(songs[i]), record["key"], record["clique"], record["version"],
                            float(distance[i]), record.get("meta", {}),
                            float(lyrics[i]) if audio is not None else None,
                            float(audio[i]) if audio is not None else None))
        return QueryResult(name, hits, len(songs), time.perf_counter() - start)

    def search_key(self, key: str) -> QueryResult:
        """Rank for a song already in the index (it comes back too, at distance ~0)."""
        song = self.index.find(key)
        if song is None:
            raise UserError(f"--key {key!r}: not in the index {self.index.directory} "
                            f"({self.index.n_songs} songs; 'wealy index info' describes it)")
        clews_query = self.clews[key] if self.clews is not None else None
        return self.search(self.index.chunks(song), key, clews_query)

    def _audio_distances(self, clews_query: np.ndarray, songs: np.ndarray) -> np.ndarray:
        from wealy_cli.clews.distances import clews_distances_to

        keys = [self.index.record(int(s))["key"] for s in songs]
        redux = self.index.manifest["clews"]["redux"]
        return clews_distances_to(clews_query, [self.clews[k] for k in keys], redux)

    def _fused(self, lyrics: np.ndarray, audio: np.ndarray) -> np.ndarray:
        from wealy_cli.ranking.fusion import apply_normalization, combine

        method = self.opts.normalize
        normed = [apply_normalization(lyrics, method, self.fusion["lyrics"]),  # type: ignore[arg-type]
                  apply_normalization(audio, method, self.fusion["audio"])]  # type: ignore[arg-type]
        return combine(normed, [self.opts.alpha])


def _fusion_parts(index: Index, method: str, topk: int) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The index's CLEWS store and the normalisation statistics of both modalities."""
    from wealy_cli.core.store import Store
    from wealy_cli.ranking.fusion import normalization_stats

    info = index.manifest.get("clews")
    if not info:
        raise UserError(f"--alpha: the index {index.directory} holds no CLEWS embeddings "
                        "(build it with --clews-store to fuse lyrics and audio)")
    path = index.directory / FUSION_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            lyrics, audio = data[f"lyrics_top{topk}"] if f"lyrics_top{topk}" in data else None, data["audio"]
    except (OSError, KeyError, ValueError) as err:
        raise IndexFileError(f"{path}: fusion statistics cannot be read ({err}); the index is damaged") from err
    if lyrics is None:
        raise UserError(f"--topk {topk}: the index kept fusion statistics for topk {index.manifest.get('topk')} "
                        "only; search with that --topk to fuse")
    own = np.eye(len(lyrics), dtype=bool)
    stats = {"lyrics": normalization_stats(lyrics, method, own),  # type: ignore[arg-type]
             "audio": normalization_stats(audio, method, own)}  # type: ignore[arg-type]
    return Store(index.directory / info["dir"]), stats


# ---------------------------------------------------------------- audio queries


class AudioQueries:
    """Embeds audio files as the index's songs were: Whisper with the index's extraction settings,
    then the index's WEALY checkpoint (and CLEWS checkpoint when fusing). Models load on first use."""

    def __init__(self, index: Index, checkpoint: Path | None = None, clews_checkpoint: Path | None = None,
                 batch_size: int = 32) -> None:
        self.index = index
        self.checkpoint = checkpoint_for(index, checkpoint)
        self.clews_checkpoint = clews_checkpoint
        self.batch_size = batch_size
        self._whisper = None
        self._model = None
        self._clews = None

    def embed(self, path: Path) -> np.ndarray:
        """Chunk embeddings (float16, as indexed) of one audio file."""
        from wealy_cli.core.audio import AudioError, load_audio
        from wealy_cli.ranking.chunks import embed_rows
        from wealy_cli.ranking.options import EmbedOptions
        from wealy_cli.whisper.extract import song_features

        models, settings = self._whisper_models()
        model, cfg = self._wealy_model()
        try:
            rows = song_features(models, settings, load_audio(path, settings.max_seconds), sung_only=cfg.text_rows)
        except AudioError as err:
            raise UserError(f"{path}: cannot be used as a query ({err})") from err
        m = self.index.manifest
        chunks = embed_rows(model, rows, EmbedOptions(chunk=m["chunk"], overlap=m["overlap"], topk=m["topk"],
                                                      batch_size=self.batch_size), per_row=cfg.per_row)
        if not len(chunks):
            raise UserError(f"{path}: cannot be used as a query (Whisper gave no feature rows)")
        return chunks.astype(np.float16)  # rounded as the index's songs are

    def embed_clews(self, path: Path) -> np.ndarray:
        """CLEWS shingle embeddings of one audio file, with the index's CLEWS settings."""
        from wealy_cli.clews.extract import embed_song
        from wealy_cli.core.audio import AudioError, load_audio

        settings = self.index.manifest["clews"]["settings"]
        model = self._clews_model()
        try:
            audio = load_audio(path, float(settings["max_seconds"]))
        except AudioError as err:
            raise UserError(f"{path}: cannot be used as a query ({err})") from err
        return embed_song(model, audio, float(settings["shingle_seconds"]), float(settings["hop"]))

    def _whisper_models(self) -> tuple[Any, Any]:
        if self._whisper is None:
            import torch

            from wealy_cli.whisper.extract import load_models, recorded_options

            recorded = self.index.manifest.get("features", {}).get("settings", {})
            if recorded.get("extractor") != "whisper":
                raise UserError(f"{self.index.directory}: the index was not built from 'wealy extract whisper' "
                                "features, so audio cannot be embedded as its songs were; query it with --key")
            settings = recorded_options(recorded)
            self._whisper = (load_models(settings, torch.device("cpu"), threads=0), settings)
        return self._whisper

    def _wealy_model(self) -> Any:
        if self._model is None:
            from wealy_cli.model.network import load_model

            self._model = load_model(self.checkpoint)
        return self._model

    def _clews_model(self) -> Any:
        if self._clews is None:
            from wealy_cli.clews.extract import file_sha256
            from wealy_cli.clews.model import load_clews

            if self.clews_checkpoint is None:
                raise UserError("--clews-checkpoint is needed to embed an audio query for fusion (--alpha > 0)")
            want = self.index.manifest["clews"]["settings"].get("checkpoint_sha256")
            if file_sha256(self.clews_checkpoint) != want:
                raise UserError(f"--clews-checkpoint {self.clews_checkpoint}: not the CLEWS checkpoint the index's "
                                f"CLEWS embeddings were made with (sha256 {str(want)[:16]}…)")
            self._clews = load_clews(self.clews_checkpoint)
        return self._clews


def checkpoint_for(index: Index, checkpoint: Path | None) -> Path:
    """The WEALY weights to embed queries with: ``checkpoint`` (which must be the index's, by
    weights digest) or the one recorded in the index."""
    from wealy_cli.retrieval.evaluate import weights_digest

    model = index.manifest.get("model", {})
    path = Path(checkpoint) if checkpoint is not None else Path(str(model.get("path")))
    if checkpoint is None and not model.get("path"):
        raise UserError(f"{index.directory}: records no checkpoint; give --checkpoint")
    digest = weights_digest(path)
    if digest != model.get("weights_digest"):
        what = f"--checkpoint {path}" if checkpoint is not None else f"the recorded checkpoint {path}"
        raise IndexFileError(f"{what}: weights (digest {digest}) are not those the index {index.directory} was "
                             f"built with (digest {model.get('weights_digest')}); use the same checkpoint or "
                             "rebuild the index")
    return path


def query_paths(path: Path) -> list[Path]:
    """The ``path`` column of a queries CSV (relative paths: from the CSV's folder)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UserError(f"--queries {path}: file not found") from err
    except UnicodeDecodeError as err:
        raise UserError(f"--queries {path}: not UTF-8 text") from err
    reader = csv.DictReader(text.splitlines())
    if "path" not in [c.strip() for c in reader.fieldnames or []]:
        raise UserError(f"--queries {path}: needs a column 'path'; found {reader.fieldnames}")
    out = []
    for rec in reader:
        value = (rec.get("path") or "").strip()
        if not value:
            raise UserError(f"--queries {path}:{reader.line_num}: the path is empty")
        p = Path(value)
        out.append(p if p.is_absolute() else Path(path).parent / p)
    return out


# ---------------------------------------------------------------- a run


def run_search(run: SearchRun) -> list[QueryResult]:
    """``wealy search``: every query (audio files, a key, or a CSV of paths) against the index."""
    index = Index(run.index)
    searcher = Searcher(index, run)
    if run.key is not None:
        return [searcher.search_key(run.key)]
    paths = list(run.query) if run.query else query_paths(run.queries)
    embedder = AudioQueries(index, run.checkpoint, run.clews_checkpoint)
    results = []
    for path in paths:
        chunks = embedder.embed(Path(path))
        clews = embedder.embed_clews(Path(path)) if run.alpha > 0 else None
        results.append(searcher.search(chunks, str(path), clews))
    return results


# ---------------------------------------------------------------- output


def results_json(results: Sequence[QueryResult]) -> str:
    payload = {"queries": [{"query": r.query, "results": [h.to_dict() for h in r.hits]} for r in results]}
    return json.dumps(payload, ensure_ascii=False, indent=2)


def results_csv(results: Sequence[QueryResult]) -> str:
    meta_cols = sorted({k for r in results for h in r.hits for k in h.meta})
    fused = any(h.lyrics_distance is not None for r in results for h in r.hits)
    extra = ["lyrics_distance", "audio_distance"] if fused else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "rank", "key", "clique", "version", "distance", *extra, *meta_cols])
    for r in results:
        for h in r.hits:
            d = h.to_dict()
            writer.writerow([r.query, h.rank, h.key, h.clique, h.version, d["distance"],
                             *[d.get(c) for c in extra], *[h.meta.get(c, "") for c in meta_cols]])
    return buffer.getvalue()


def results_tables(results: Sequence[QueryResult]) -> list[Any]:
    """One rich table per query: rank, key, clique, metadata columns, distance."""
    from wealy_cli.core import ui

    tables = []
    for r in results:
        meta_cols = sorted({k for h in r.hits for k in h.meta})
        fused = any(h.lyrics_distance is not None for h in r.hits)
        columns = ["rank", "key", "clique", *meta_cols, "distance", *(["lyrics", "audio"] if fused else [])]
        rows = [[h.rank, h.key, h.clique, *[h.meta.get(c, "") for c in meta_cols], f"{h.distance:.4f}",
                 *([f"{h.lyrics_distance:.4f}", f"{h.audio_distance:.4f}"] if fused else [])] for h in r.hits]
        title = f"{r.query}: {len(r.hits)} of {r.candidates} candidate songs ({1000 * r.seconds:.0f} ms)"
        tables.append(ui.table(title, columns, rows))
    return tables
