"""Catalogue index: a directory of chunk embeddings that finds the songs nearest to a query.

Layout (format version 1)::

    manifest.json     the commit point: format and version, counts, FAISS kind and parameters,
                      model (weights digest), chunking, the feature store's extraction settings
    vectors.f16       chunk embeddings (chunks × dim, float16, L2-normalised before rounding; the
                      values of the chunk-embedding cache), rows in song order; exact re-ranking
                      reads them memory-mapped, so they need not fit in memory
    offsets.i64       song s owns rows offsets[s]:offsets[s+1] (songs + 1 values): chunk → song
    songs.jsonl       one JSON object per song: key, clique, version, metadata
    songs.idx         byte offset of each songs.jsonl line (songs + 1 values, int64)
    index-NNNNN.faiss the FAISS index of every row (FAISS id = row number)
    clews/            CLEWS shingle embeddings of the songs (a wealy store), when fused

Writes are crash-safe without copying what exists: the data files only grow, and the manifest,
replaced atomically once everything it counts is on disk (fsynced), says how much of each file
is valid. A crash (even SIGKILL) leaves at most a tail beyond the counted sizes, which the next
writer cuts off. A changed FAISS index is written under a new name before the manifest points to
it. Readers only read.

FAISS kinds (chunk embeddings are L2-normalised, so cosine = inner product):

- ``flat``: ``IndexFlatIP``, exact; float32 copy of every chunk in memory (4·dim bytes a chunk).
- ``ivf-pq``: ``IndexIVFPQ``, inverted lists (nlist ≈ 4·√chunks) over product-quantised codes
  (m bytes a chunk at 8 bits), after a learnt rotation (OPQ; ``opq``); ``nprobe`` lists
  visited. Above 4,096 lists the coarse quantizer is an HNSW graph over the list centroids, so
  that assigning millions of chunks (training and adding) stays fast.
- ``hnsw``: ``IndexHNSWFlat``, a graph over float32 chunks; ``ef_search`` trades recall for time.

An ANN index only proposes candidate songs; their distances are computed exactly (``search``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wealy_cli import __version__
from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import fsync_dir, replace_atomically, temporary_name, write_atomically
from wealy_cli.retrieval.options import IndexKindOptions

FORMAT = "wealy-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.f16"
OFFSETS = "offsets.i64"
SONGS = "songs.jsonl"
SONG_LINES = "songs.idx"
CLEWS_DIR = "clews"
CACHE_DIR = ".cache"
_FAISS_RE = re.compile(r"^index-(\d{5,})\.faiss$")
_OWN_FILES = {MANIFEST, VECTORS, OFFSETS, SONGS, SONG_LINES, CLEWS_DIR, CACHE_DIR, "fusion.npz", ".wealy.lock",
              "index_build.yaml", "index_add.yaml"}  # the last two: settings of the runs
ADD_ROWS = 65536  # chunks converted to float32 and added to FAISS at a time
HNSW_QUANTIZER_LISTS = 4096  # ivf-pq with more lists assigns chunks through an HNSW graph of the centroids


class IndexFileError(UserError, ValueError):
    """An index directory that is missing, damaged, from a newer wealy, or does not fit the request."""


# ---------------------------------------------------------------- parameters


def kind_options(data: dict[str, Any]) -> IndexKindOptions:
    """The index kind and parameters a manifest records."""
    return IndexKindOptions.model_validate({k: v for k, v in data.items() if k in IndexKindOptions.model_fields})


def auto_nlist(n_chunks: int) -> int:
    """About 4·√chunks inverted lists, with ≥ 39 training chunks per list (FAISS's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n_chunks)), n_chunks // 39)))


def set_threads(threads: int) -> None:
    """FAISS's OpenMP threads (0 = leave its default: one per core)."""
    if threads > 0:
        import faiss

        faiss.omp_set_num_threads(int(threads))


def new_faiss_index(params: IndexKindOptions, dim: int, n_chunks: int):  # noqa: ANN201 - a faiss.Index
    """An empty FAISS index of ``params.kind`` for ``n_chunks`` chunks of ``dim`` values."""
    import faiss

    if params.kind == "ivf-pq" and dim % params.m:
        raise UserError(f"--m {params.m}: must divide the embedding size {dim}")
    if params.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        return index
    need = max(2 ** params.nbits, 39)
    if n_chunks < need:
        raise UserError(f"--kind ivf-pq needs at least {need} chunks to train its codebooks, the catalogue "
                        f"has {n_chunks}; use --kind flat (exact) for a catalogue this small")
    nlist = params.nlist or auto_nlist(n_chunks)
    # Training and adding assign every chunk to its nearest list centroid: a flat quantizer costs
    # nlist·dim operations a chunk, a graph over the centroids far fewer once there are many.
    if nlist > HNSW_QUANTIZER_LISTS:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efSearch = 64
    else:
        quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # k-means iterations (coarse lists and PQ codebooks): enough to converge here
    ivf.pq.cp.niter = 10
    ivf.nprobe = params.nprobe
    if not params.opq:
        return ivf
    # An orthogonal rotation keeps inner products; learnt so that the sub-vectors quantise better.
    return faiss.IndexPreTransform(faiss.OPQMatrix(dim, params.m), ivf)


def configure_search(index, params: IndexKindOptions, nprobe: int | None = None,  # noqa: ANN001 - a faiss.Index
                     ef_search: int | None = None) -> None:
    """Search-time knobs: ``nprobe`` (ivf-pq), ``ef_search`` (hnsw); None = the index's default."""
    import faiss

    if params.kind == "ivf-pq":
        faiss.extract_index_ivf(index).nprobe = int(nprobe or params.nprobe)
    elif params.kind == "hnsw":
        index.hnsw.efSearch = int(ef_search or params.ef_search)


# ---------------------------------------------------------------- reading


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an index directory, checked for format and version."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFileError(f"{directory}: index directory does not exist")
    if not path.is_file():
        raise IndexFileError(f"{directory}: not a wealy index (no {MANIFEST}; 'wealy index build' makes one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFileError(f"{path}: manifest is not valid JSON ({err}); the index is damaged") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFileError(f"{path}: not a wealy index manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise IndexFileError(f"{path}: format version {version!r} is not valid; the index is damaged")
    if version > FORMAT_VERSION:
        raise IndexFileError(f"{path}: index format version {version} is newer than this wealy reads "
                             f"({FORMAT_VERSION}; made by wealy {manifest.get('wealy', '?')}); upgrade wealy")
    for name in ("songs", "chunks", "dim"):
        if not isinstance(manifest.get(name), int) or manifest[name] < 0:
            raise IndexFileError(f"{path}: '{name}' is missing or not a count; the index is damaged")
    return manifest


class Index:
    """Read-only view of an index directory. Opening checks that every file holds at least what
    the manifest counts and that the chunk → song mapping is consistent; the FAISS index is
    loaded on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.n_songs = int(self.manifest["songs"])
        self.n_chunks = int(self.manifest["chunks"])
        self.dim = int(self.manifest["dim"])
        self.params = kind_options(self.manifest.get("params", {}))
        self._check_sizes()
        self.offsets = np.fromfile(self.directory / OFFSETS, dtype=np.int64, count=self.n_songs + 1)
        self._lines = np.fromfile(self.directory / SONG_LINES, dtype=np.int64, count=self.n_songs + 1)
        if (self.offsets[0] != 0 or self.offsets[-1] != self.n_chunks or np.any(np.diff(self.offsets) < 1)
                or self._lines[0] != 0 or np.any(np.diff(self._lines) < 1)):
            raise IndexFileError(f"{self.directory / OFFSETS}: chunk or song offsets are inconsistent; "
                                 "the index is damaged")
        self.vectors = (np.memmap(self.directory / VECTORS, dtype=np.float16, mode="r",
                                  shape=(self.n_chunks, self.dim)) if self.n_chunks else
                        np.zeros((0, self.dim), np.float16))
        self._songs_file = None
        self._faiss = None
        self._keys: dict[str, int] | None = None

    def _check_sizes(self) -> None:
        need = {VECTORS: self.n_chunks * self.dim * 2, OFFSETS: (self.n_songs + 1) * 8,
                SONG_LINES: (self.n_songs + 1) * 8}
        for name, size in need.items():
            path = self.directory / name
            have = path.stat().st_size if path.is_file() else -1
            if have < size:
                what = "is missing" if have < 0 else f"holds {have} bytes, the manifest counts {size}"
                raise IndexFileError(f"{path}: {what}; the index is damaged")
        faiss_file = self.faiss_path
        if not faiss_file.is_file():
            raise IndexFileError(f"{faiss_file}: FAISS index file is missing; the index is damaged")
        if faiss_file.stat().st_size != self.manifest.get("faiss_bytes"):
            raise IndexFileError(f"{faiss_file}: {faiss_file.stat().st_size} bytes, the manifest says "
                                 f"{self.manifest.get('faiss_bytes')}; the index is damaged")

    # -- FAISS
    @property
    def faiss_path(self) -> Path:
        name = str(self.manifest.get("faiss", ""))
        if not _FAISS_RE.match(name):
            raise IndexFileError(f"{self.directory / MANIFEST}: no valid FAISS file name ({name!r}); "
                                 "the index is damaged")
        return self.directory / name

    @property
    def faiss(self):  # noqa: ANN201 - a faiss.Index
        if self._faiss is None:
            self._faiss = read_faiss(self.faiss_path, self.n_chunks, self.dim)
        return self._faiss

    # -- songs
    def song_of(self, rows: np.ndarray) -> np.ndarray:
        """The song of each chunk row."""
        return np.searchsorted(self.offsets, np.asarray(rows), side="right") - 1

    def chunk_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def chunks(self, song: int) -> np.ndarray:
        """The stored (float16) chunk embeddings of one song."""
        return np.asarray(self.vectors[self.offsets[song]:self.offsets[song + 1]])

    def record(self, song: int) -> dict[str, Any]:
        """key, clique, version and metadata of one song."""
        if self._songs_file is None:
            self._songs_file = open(self.directory / SONGS, "rb")  # noqa: SIM115 - kept open for lookups
        start, stop = int(self._lines[song]), int(self._lines[song + 1])
        self._songs_file.seek(start)
        line = self._songs_file.read(stop - start)
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IndexFileError(f"{self.directory / SONGS}: song {song} is not valid JSON; the index is "
                                 "damaged") from err

    def records(self) -> Iterator[dict[str, Any]]:
        """Every song's record, in index order."""
        with open(self.directory / SONGS, "rb") as fh:
            for song in range(self.n_songs):
                line = fh.readline()
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise IndexFileError(f"{self.directory / SONGS}: song {song} is not valid JSON; the index "
                                         "is damaged") from err

    def find(self, key: str) -> int | None:
        """The song number of ``key``, or None (the key table is read on first use)."""
        if self._keys is None:
            self._keys = {r["key"]: i for i, r in enumerate(self.records())}
        return self._keys.get(key)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        disk = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        counts = self.chunk_counts()
        model = m.get("model", {})
        return {
            "directory": str(self.directory), "format version": m["version"], "songs": self.n_songs,
            "chunks": self.n_chunks, "chunks per song (min/median/max)":
                f"{counts.min()}/{np.median(counts):g}/{counts.max()}" if len(counts) else "-",
            "dim": self.dim, "kind": self.params.kind, "parameters": _kind_params(self.params),
            "size on disk (MB)": round(disk / 2**20, 1), "faiss index (MB)": round(m.get("faiss_bytes", 0) / 2**20, 1),
            "model": model.get("path"), "weights digest": model.get("weights_digest"),
            "chunk / overlap / topk": f"{m.get('chunk')} / {m.get('overlap')} / {m.get('topk')}",
            "features": _short_settings(m.get("features", {}).get("settings", {})),
            "clews": "yes" if m.get("clews") else "no", "created": m.get("created"), "updated": m.get("updated"),
            "wealy": m.get("wealy"),
        }

    def close(self) -> None:
        if self._songs_file is not None:
            self._songs_file.close()
            self._songs_file = None


def read_faiss(path: Path, n_chunks: int, dim: int):  # noqa: ANN201 - a faiss.Index
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise IndexFileError(f"{path}: cannot be read as a FAISS index ({reason}); the index is damaged") from err
    if index.ntotal != n_chunks or index.d != dim:
        raise IndexFileError(f"{path}: holds {index.ntotal} vectors of dim {index.d}, the manifest counts "
                             f"{n_chunks} of dim {dim}; the index is damaged")
    return index


def _kind_params(params: IndexKindOptions) -> str:
    if params.kind == "ivf-pq":
        return (f"nlist {params.nlist}, m {params.m}, nbits {params.nbits}, nprobe {params.nprobe}"
                f"{', OPQ' if params.opq else ''}")
    if params.kind == "hnsw":
        return f"M {params.hnsw_m}, efConstruction {params.ef_construction}, efSearch {params.ef_search}"
    return "exact inner product"


def _short_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"


# ---------------------------------------------------------------- writing


@dataclass
class SongEntry:
    """One song to index: its key, labels, metadata and L2-normalised chunk embeddings."""

    key: str
    clique: str
    version: str
    chunks: np.ndarray  # (n, dim), float16 or float32
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppendReport:
    added: int = 0
    already_indexed: int = 0
    songs: int = 0
    chunks: int = 0
    trained: bool = False
    seconds: float = 0.0


def check_writable(directory: Path) -> None:
    """A new index may go into a missing or empty directory, or one holding only index files
    (an interrupted build); anything else is refused, so nothing unrelated is overwritten."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise IndexFileError(f"{directory}: exists and is not a directory")
    if not directory.is_dir() or (directory / MANIFEST).exists():
        return
    foreign = [p.name for p in directory.iterdir()
               if p.name not in _OWN_FILES and not _FAISS_RE.match(p.name) and not p.name.endswith(".tmp")]
    if foreign:
        raise IndexFileError(f"{directory}: not empty and not an index (holds {foreign[0]!r}); "
                             "choose a new or empty directory")


def new_manifest(dim: int, params: IndexKindOptions, info: dict[str, Any]) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {"format": FORMAT, "version": FORMAT_VERSION, "wealy": __version__, "created": now, "updated": now,
            "songs": 0, "chunks": 0, "dim": int(dim), "vector_dtype": "float16", "max_chunks": 0,
            "kind": params.kind, "params": params.model_dump(), "faiss": None, "faiss_bytes": None, **info}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomically(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def append_songs(directory: Path, songs: Iterable[SongEntry], total: int, manifest: dict[str, Any],
                 threads: int = 0) -> tuple[dict[str, Any], AppendReport]:
    """Add ``songs`` to the index in ``directory`` whose committed state is ``manifest`` (from
    ``read_manifest``, or ``new_manifest`` for a new index); returns the new manifest, written.

    Keys already indexed are skipped. A new ivf-pq index is trained on all of its first songs."""
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    report = AppendReport()
    indexed = {r["key"] for r in Index(directory).records()} if manifest["songs"] else set()
    old_rows = int(manifest["chunks"])
    files = _DataFiles(directory, manifest)
    try:
        with ui.progress() as bar:
            task = bar.add_task("writing chunk embeddings", total=total, status="")
            for entry in songs:
                if entry.key in indexed:
                    report.already_indexed += 1
                else:
                    indexed.add(entry.key)
                    files.add(entry)
                    report.added += 1
                bar.advance(task)
        files.sync()
    finally:
        files.close()
    if report.added == 0:
        report.songs, report.chunks = manifest["songs"], manifest["chunks"]
        return manifest, report
    params = kind_options(manifest["params"])
    index, report.trained = _faiss_with_new_rows(directory, manifest, params, old_rows, files.rows)
    name = _next_faiss_name(manifest.get("faiss"))
    _write_faiss(index, directory / name)
    old = manifest.get("faiss")
    if params.kind == "ivf-pq":
        params.nlist = int(_ivf(index).nlist)
    manifest = {**manifest, "songs": files.songs, "chunks": files.rows, "max_chunks": files.max_chunks,
                "params": params.model_dump(), "faiss": name, "faiss_bytes": (directory / name).stat().st_size}
    write_manifest(directory, manifest)  # the commit point
    if old and old != name:
        (directory / old).unlink(missing_ok=True)
    report.songs, report.chunks = files.songs, files.rows
    report.seconds = time.perf_counter() - start
    return manifest, report


def _ivf(index):  # noqa: ANN001, ANN202
    import faiss

    return faiss.extract_index_ivf(index)


def _next_faiss_name(current: str | None) -> str:
    match = _FAISS_RE.match(current or "")
    return f"index-{(int(match[1]) + 1 if match else 1):05d}.faiss"


def _write_faiss(index, path: Path) -> None:  # noqa: ANN001 - a faiss.Index
    import faiss

    tmp = temporary_name(path)
    try:
        faiss.write_index(index, str(tmp))
        replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _faiss_with_new_rows(directory: Path, manifest: dict[str, Any], params: IndexKindOptions, old_rows: int,
                         rows: int):  # noqa: ANN202 - (faiss.Index, trained)
    """The committed FAISS index (or a new, trained one) with rows old_rows:rows added."""
    vectors = np.memmap(directory / VECTORS, dtype=np.float16, mode="r", shape=(rows, manifest["dim"]))
    trained = False
    if manifest.get("faiss"):
        index = read_faiss(directory / manifest["faiss"], old_rows, manifest["dim"])
    else:
        index = new_faiss_index(params, manifest["dim"], rows)
        if not index.is_trained:
            _train(index, vectors, params)
            trained = True
    with ui.progress() as bar:
        task = bar.add_task(f"adding to the {params.kind} index", total=rows - old_rows, status="")
        for a in range(old_rows, rows, ADD_ROWS):
            b = min(rows, a + ADD_ROWS)
            index.add(as_unit_float32(vectors[a:b]))
            bar.advance(task, b - a)
    del vectors
    return index, trained


def _train(index, vectors: np.ndarray, params: IndexKindOptions) -> None:  # noqa: ANN001 - a faiss.Index
    """Train on an evenly random sample of the rows (a fixed seed: the same data, the same index)."""
    n = vectors.shape[0]
    nlist = int(_ivf(index).nlist)
    size = min(n, params.train_size or max(40 * nlist, 65536))
    rows = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False)) if size < n else np.arange(n)
    sample = np.concatenate([as_unit_float32(vectors[rows[i:i + ADD_ROWS]]) for i in range(0, size, ADD_ROWS)])
    with ui.progress() as bar:
        task = bar.add_task(f"training ivf-pq ({nlist} lists) on {size} chunks", total=None, status="")
        index.train(sample)
        bar.update(task, total=1, completed=1)


def as_unit_float32(rows: np.ndarray) -> np.ndarray:
    """float32 rows divided by their norm (the rounding to float16 moved them off the sphere),
    as ``tiles.SongSet`` renormalises before computing song distances."""
    x = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


class _DataFiles:
    """The growing data files, cut back to the committed sizes on opening."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.dim = int(manifest["dim"])
        self.songs = int(manifest["songs"])
        self.rows = int(manifest["chunks"])
        self.max_chunks = int(manifest.get("max_chunks", 0))
        if self.songs:
            lines = np.fromfile(directory / SONG_LINES, dtype=np.int64, count=self.songs + 1)
            offsets = np.fromfile(directory / OFFSETS, dtype=np.int64, count=self.songs + 1)
            self.song_bytes, last_row = int(lines[-1]), int(offsets[-1])
            if last_row != self.rows:
                raise IndexFileError(f"{directory / OFFSETS}: does not match the manifest; the index is damaged")
        else:
            self.song_bytes = 0
        table = (self.songs + 1) * 8 if self.songs else 0  # a new index: its leading 0 is written below
        sizes = {VECTORS: self.rows * self.dim * 2, OFFSETS: table, SONG_LINES: table, SONGS: self.song_bytes}
        self.handles = {}
        for name, size in sizes.items():
            fh = open(directory / name, "a+b")  # noqa: SIM115 - closed in close()
            fh.truncate(size)  # cut a tail an interrupted writer left
            self.handles[name] = fh
        if self.songs == 0:
            self.handles[OFFSETS].write(np.zeros(1, np.int64).tobytes())
            self.handles[SONG_LINES].write(np.zeros(1, np.int64).tobytes())

    def add(self, entry: SongEntry) -> None:
        chunks = np.asarray(entry.chunks)
        if chunks.ndim != 2 or chunks.shape[1] != self.dim or chunks.shape[0] < 1:
            raise UserError(f"song {entry.key!r}: expected chunk embeddings (≥ 1, {self.dim}), got {chunks.shape}")
        record = {"key": entry.key, "clique": entry.clique, "version": entry.version, "meta": entry.meta}
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        self.handles[VECTORS].write(chunks.astype(np.float16).tobytes())
        self.rows += chunks.shape[0]
        self.song_bytes += len(line)
        self.handles[SONGS].write(line)
        self.handles[OFFSETS].write(np.int64(self.rows).tobytes())
        self.handles[SONG_LINES].write(np.int64(self.song_bytes).tobytes())
        self.songs += 1
        self.max_chunks = max(self.max_chunks, chunks.shape[0])

    def sync(self) -> None:
        for fh in self.handles.values():
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.directory)

    def close(self) -> None:
        for fh in self.handles.values():
            fh.close()
