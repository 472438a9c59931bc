"""Distance-matrix files: one matrix plus the version keys and cliques of its rows and columns.

Three formats, chosen by the file suffix when writing and by the file's first bytes when reading:

- ``.npz`` (default, numpy): arrays ``distances`` (float32, n_q × n_c), ``query_keys``,
  ``candidate_keys``, ``query_cliques``, ``candidate_cliques`` (unicode) and ``metadata``
  (a JSON string). Read with ``allow_pickle=False``.
- ``.h5`` / ``.hdf5``: the same datasets (strings UTF-8), metadata as a JSON attribute. Written
  row block by row block (:class:`MatrixWriter`) and read the same way (:func:`open_rows`), so
  a matrix larger than memory (116,197² float32 is 54 GB) never has to be held.
- ``.pkl`` / ``.pickle``: the original research code's layout, a dict with ``distance_matrix``,
  ``query_references`` [{clique, version, matrix_row}], ``candidate_references``
  [{clique, version, matrix_col}] and ``metadata``. Read through ``safepickle.safe_load``, never
  with the plain unpickler.

Version keys are ``"<clique>/<version>"`` (``data.make_key``); rows and columns line up with them.

Reading treats every file as untrusted; whatever is wrong gives a ``MatrixFileError`` naming the
file. The distances are checked the same way in every format (``check_distances``): a 2-D array
of integers or floats (not booleans, complex numbers, strings or objects), converted to float32.
It may hold +inf (a query's own entry, "never a match") but no NaN, no −inf, no finite value
beyond float32's range (it would silently become inf), and at least one finite entry. Labels
(keys, cliques) are 1-D arrays of strings or integers; metadata is one JSON string. Before any
array is read, the sizes its header declares must fit ``safepickle.memory_limit`` of the file's
size (a compressed or sparse file cannot ask for gigabytes); HDF5 names must be datasets stored
in the file itself (no groups, links, external or virtual storage).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from wealy_cli.core.datasets import make_key
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import fsync_dir
from wealy_cli.core.safepickle import memory_limit, safe_load

MatrixFormat = Literal["npz", "hdf5", "pickle"]
SUFFIXES: dict[str, MatrixFormat] = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5",
                                     ".pkl": "pickle", ".pickle": "pickle"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_LABELS = ("query_keys", "candidate_keys", "query_cliques", "candidate_cliques")
_REQUIRED = ("distances", *_LABELS)


class MatrixFileError(UserError):
    """A distance-matrix file is missing, malformed or inconsistent."""


@dataclass
class DistanceMatrix:
    """Distances between queries (rows) and candidates (columns); smaller = closer."""

    distances: np.ndarray
    query_keys: list[str]
    candidate_keys: list[str]
    query_cliques: list[str]
    candidate_cliques: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.distances = np.asarray(self.distances, dtype=np.float32)
        self.query_keys = [str(k) for k in self.query_keys]
        self.candidate_keys = [str(k) for k in self.candidate_keys]
        self.query_cliques = [str(c) for c in self.query_cliques]
        self.candidate_cliques = [str(c) for c in self.candidate_cliques]
        problem = self.problem()
        if problem:
            raise MatrixFileError(f"inconsistent distance matrix: {problem}")

    def problem(self) -> str | None:
        """What is inconsistent about this matrix, or None."""
        if self.distances.ndim != 2:
            return f"distances must be 2-D, got shape {self.distances.shape}"
        n_q, n_c = self.distances.shape
        for name, values, n in (("query_keys", self.query_keys, n_q), ("query_cliques", self.query_cliques, n_q),
                                ("candidate_keys", self.candidate_keys, n_c),
                                ("candidate_cliques", self.candidate_cliques, n_c)):
            if len(values) != n:
                return f"{name} has {len(values)} entries for a {n_q}×{n_c} matrix"
        for name, keys in (("query", self.query_keys), ("candidate", self.candidate_keys)):
            if len(set(keys)) != len(keys):
                dup = next(k for k in keys if keys.count(k) > 1)
                return f"{name} key {dup!r} appears more than once"
        return None

    @property
    def shape(self) -> tuple[int, int]:
        return self.distances.shape  # type: ignore[return-value]

    @classmethod
    def square(cls, distances: np.ndarray, keys: Sequence[str], cliques: Sequence[str],
               metadata: dict[str, Any] | None = None) -> DistanceMatrix:
        """All-against-all matrix: the same versions as queries and candidates."""
        return cls(distances, list(keys), list(keys), list(cliques), list(cliques), dict(metadata or {}))


# ---------------------------------------------------------------- writing


def matrix_format(path: Path) -> MatrixFormat:
    """The format a path's suffix asks for."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise MatrixFileError(f"{path}: unknown distance-matrix suffix {Path(path).suffix!r} "
                              f"(use one of {', '.join(SUFFIXES)})")
    return fmt


def output_format(path: Path, requested: MatrixFormat | None = None) -> MatrixFormat:
    """The format to write ``path`` in: ``requested`` (which the suffix must not contradict), else
    the suffix's."""
    by_suffix = SUFFIXES.get(Path(path).suffix.lower())
    if requested is None:
        if by_suffix is None:
            raise MatrixFileError(f"--output {path}: unknown suffix {Path(path).suffix!r}; use .npz, .h5 or .pkl, "
                                  "or give --format")
        return by_suffix
    if by_suffix is not None and by_suffix != requested:
        raise MatrixFileError(f"--output {path}: suffix {Path(path).suffix!r} does not match --format {requested}")
    return requested


def write_matrix(path: Path, m: DistanceMatrix, format: MatrixFormat | None = None) -> Path:
    """Write ``m`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    fmt = format or matrix_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if fmt == "npz":
            _write_npz(tmp, m)
        elif fmt == "hdf5":
            _write_hdf5(tmp, m)
        elif fmt == "pickle":
            tmp.write_bytes(pickle.dumps(to_original_layout(m), protocol=4))
        else:
            raise MatrixFileError(f"{path}: unknown distance-matrix format {fmt!r} (npz, hdf5, pickle)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _metadata_json(m: DistanceMatrix) -> str:
    return json.dumps(m.metadata, default=_json_default, sort_keys=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_npz(path: Path, m: DistanceMatrix) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, distances=m.distances, query_keys=np.array(m.query_keys, dtype=str),
             candidate_keys=np.array(m.candidate_keys, dtype=str),
             query_cliques=np.array(m.query_cliques, dtype=str),
             candidate_cliques=np.array(m.candidate_cliques, dtype=str),
             metadata=np.array(_metadata_json(m)))
    with open(path, "wb") as fh:
        fh.write(buffer.getvalue())
        fh.flush()
        os.fsync(fh.fileno())


def _write_hdf5(path: Path, m: DistanceMatrix) -> None:
    with h5py.File(path, "w") as fh:
        _hdf5_layout(fh, m.query_keys, m.candidate_keys, m.query_cliques, m.candidate_cliques,
                     _metadata_json(m), data=m.distances)


def _hdf5_layout(fh: h5py.File, query_keys: Sequence[str], candidate_keys: Sequence[str],
                 query_cliques: Sequence[str], candidate_cliques: Sequence[str], metadata_json: str,
                 data: np.ndarray | None = None) -> h5py.Dataset:
    """Keys, cliques, metadata and the ``distances`` dataset (contiguous float32: whole rows are
    contiguous on disk, so a row block is one read or write)."""
    text = h5py.string_dtype("utf-8")
    for name, values in (("query_keys", query_keys), ("candidate_keys", candidate_keys),
                         ("query_cliques", query_cliques), ("candidate_cliques", candidate_cliques)):
        fh.create_dataset(name, data=np.array(list(values), dtype=object), dtype=text)
    fh.attrs["metadata"] = metadata_json
    fh.attrs["format"] = "wealy-distance-matrix"
    if data is not None:
        return fh.create_dataset("distances", data=data)
    return fh.create_dataset("distances", shape=(len(query_keys), len(candidate_keys)), dtype=np.float32)


# ---------------------------------------------------------------- streaming (HDF5 row blocks)


def hdf5_bytes(n_queries: int, n_candidates: int, key_chars: int = 64) -> int:
    """Disk space an .h5 distance matrix needs: the float32 matrix, keys and cliques, a margin."""
    return 4 * n_queries * n_candidates + 2 * key_chars * (n_queries + n_candidates) + 2**20


def check_disk_space(path: Path, needed: int) -> None:
    """UserError naming ``path`` when its folder has less than ``needed`` bytes free (checked
    before the work starts, so nothing is spent on a file that cannot be written)."""
    folder = Path(path).resolve().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise MatrixFileError(f"{path}: the distance matrix needs {needed / 2**30:.2f} GiB of disk, "
                              f"{folder} has {free / 2**30:.2f} GiB free")


class MatrixWriter:
    """Writes an .h5 distance matrix row block by row block.

    The file is built under a hidden temporary name in the target folder and renamed into place
    only when every row has been written (``close``, or leaving the ``with`` block without an
    error); on an error the temporary file is removed and an existing file at ``path`` is left
    as it was. Disk space is checked when the writer opens."""

    def __init__(self, path: Path, query_keys: Sequence[str], candidate_keys: Sequence[str],
                 query_cliques: Sequence[str], candidate_cliques: Sequence[str],
                 metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        header = DistanceMatrix(np.zeros((0, 0), np.float32), [], [], [], [], dict(metadata or {}))
        self.shape = (len(query_keys), len(candidate_keys))
        check_disk_space(self.path, hdf5_bytes(*self.shape))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._file = h5py.File(self.tmp, "w")
        try:
            self._rows = _hdf5_layout(self._file, [str(k) for k in query_keys], [str(k) for k in candidate_keys],
                                      [str(c) for c in query_cliques], [str(c) for c in candidate_cliques],
                                      _metadata_json(header))
        except BaseException:
            self.abort()
            raise
        self.written = np.zeros(self.shape[0], dtype=bool)

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``start .. start + len(block)``."""
        self.write_rows(np.arange(start, start + len(block)), block)

    def write_rows(self, rows: np.ndarray | Sequence[int], block: np.ndarray) -> None:
        """Rows at the positions ``rows`` (any order); consecutive positions are written together."""
        rows = np.asarray(rows, dtype=np.int64)
        block = np.asarray(block, dtype=np.float32)
        if block.shape != (len(rows), self.shape[1]):
            raise ValueError(f"row block has shape {block.shape}, expected ({len(rows)}, {self.shape[1]})")
        order = np.argsort(rows, kind="stable")
        rows, block = rows[order], block[order]
        for a, b in _runs(rows):
            self._rows[rows[a]:rows[a] + (b - a)] = block[a:b]
        self.written[rows] = True

    def close(self) -> Path:
        """Finish: every row must have been written; then fsync and rename into place."""
        missing = int((~self.written).sum())
        if missing:
            self.abort()
            raise MatrixFileError(f"{self.path}: {missing} of {self.shape[0]} rows were never written; "
                                  "nothing was saved")
        self._file.flush()
        self._file.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file."""
        try:
            self._file.close()
        except Exception:  # already closed, or never fully opened
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) positions in ``sorted_rows`` of runs of consecutive values."""
    if len(sorted_rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    edges = [0, *breaks.tolist(), len(sorted_rows)]
    return list(zip(edges[:-1], edges[1:]))


class MatrixRows:
    """A distance-matrix file's keys, cliques and metadata, and its rows on demand.

    .h5 files are read row block by row block (never whole); .npz and pickle files cannot be
    read in parts and are loaded once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._matrix: DistanceMatrix | None = None
        if _is_hdf5(self.path):
            self._open_hdf5()
        else:
            self._matrix = read_matrix(self.path)
            m = self._matrix
            self.query_keys, self.candidate_keys = m.query_keys, m.candidate_keys
            self.query_cliques, self.candidate_cliques = m.query_cliques, m.candidate_cliques
            self.metadata = m.metadata
        self.shape = (len(self.query_keys), len(self.candidate_keys))

    def _open_hdf5(self) -> None:
        """Keys, cliques and metadata now, checked as ``read_matrix`` checks them; the distances
        stay on disk (each row block is checked as it is read)."""
        path = self.path
        try:
            self._file = h5py.File(path, "r")
            fh = self._file
            datasets = {name: _dataset(fh, name, path) for name in _REQUIRED}
            self._rows = datasets["distances"]
            if self._rows.dtype.kind not in "iuf":
                raise MatrixFileError(f"{path}: 'distances' must hold real numbers (integers or floats), not "
                                      f"{_dtype_words(self._rows.dtype)}")
            if self._rows.ndim != 2:
                raise MatrixFileError(f"{path}: 'distances' must be 2-D, got shape {self._rows.shape}")
            budget = memory_limit(path.stat().st_size)
            keys = {}
            for name in _LABELS:
                values, used = _hdf5_labels(datasets[name], name, path, budget)
                budget -= used
                keys[name] = _labels(values, name, str(path))
            metadata = _parse_metadata(_hdf5_metadata(fh, path) if "metadata" in fh.attrs else None, str(path))
            problem = _row_file_problem(self._rows.shape, keys)
            if problem:
                raise MatrixFileError(f"{path}: {problem}")
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            self.close()
            raise MatrixFileError(f"{path}: unreadable HDF5 file ({type(err).__name__}: {err})") from err
        except BaseException:
            self.close()
            raise
        self.query_keys, self.candidate_keys = keys["query_keys"], keys["candidate_keys"]
        self.query_cliques, self.candidate_cliques = keys["query_cliques"], keys["candidate_cliques"]
        self.metadata = metadata

    @property
    def in_memory(self) -> bool:
        return self._matrix is not None

    def rows(self, index: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 rows ``index`` (any order), shape (len(index), n_candidates)."""
        index = np.asarray(index, dtype=np.int64)
        if self._matrix is not None:
            return self._matrix.distances[index]
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        out = np.empty((len(index), self.shape[1]), dtype=np.float32)
        for a, b in _runs(wanted):
            with np.errstate(over="ignore"):  # beyond float32: becomes inf, refused below
                out[order[a:b]] = self._rows[wanted[a]:wanted[a] + (b - a)]
        if not np.isfinite(out).all():
            self._refuse_nonfinite(out, index)
        return out

    def _refuse_nonfinite(self, block: np.ndarray, index: np.ndarray) -> None:
        """The per-block form of ``check_distances``: +inf is allowed, NaN and −inf are not (a
        finite value beyond float32 is not told apart from +inf here)."""
        for mask, what in ((np.isnan(block), "NaN"), (block == -np.inf, "-inf")):
            if mask.any():
                i, j = np.unravel_index(int(mask.argmax()), mask.shape)
                raise MatrixFileError(f"{self.path}: 'distances' holds {what} (row {int(index[i])}, column {j}); "
                                      "a distance must be a number, +inf meaning 'never a match'")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MatrixRows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _row_file_problem(shape: tuple[int, ...], keys: dict[str, list[str]]) -> str | None:
    """What is inconsistent between an .h5 file's matrix shape and its keys and cliques."""
    want = (len(keys["query_keys"]), len(keys["candidate_keys"]))
    if len(shape) != 2 or tuple(shape) != want:
        return f"distances have shape {tuple(shape)}, the keys say {want[0]}×{want[1]}"
    if len(keys["query_cliques"]) != want[0] or len(keys["candidate_cliques"]) != want[1]:
        return "the cliques do not match the keys in number"
    for side in ("query", "candidate"):
        seen: set[str] = set()
        for key in keys[f"{side}_keys"]:
            if key in seen:
                return f"{side} key {key!r} appears more than once"
            seen.add(key)
    return None


def open_rows(path: Path) -> MatrixRows:
    """Open a distance-matrix file for reading by rows (see :class:`MatrixRows`)."""
    path = Path(path)
    if not path.is_file():
        raise MatrixFileError(f"{path}: distance-matrix file not found")
    return MatrixRows(path)


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8).startswith(_HDF5_MAGIC)


def to_original_layout(m: DistanceMatrix) -> dict[str, Any]:
    """The original tools' dict: matrix, references with row/column indices, metadata.

    Clique and version come from the version key (``<clique>/<version>``); the clique label
    is stored separately too when it differs from the key's clique part."""
    def refs(keys: list[str], cliques: list[str], index_name: str) -> list[dict[str, Any]]:
        out = []
        for i, (key, clique) in enumerate(zip(keys, cliques)):
            key_clique, _, version = key.partition("/")
            ref: dict[str, Any] = {"clique": key_clique, "version": version, index_name: i}
            if clique != key_clique:
                ref["clique_label"] = clique
            out.append(ref)
        return out

    return {"distance_matrix": m.distances,
            "query_references": refs(m.query_keys, m.query_cliques, "matrix_row"),
            "candidate_references": refs(m.candidate_keys, m.candidate_cliques, "matrix_col"),
            "metadata": json.loads(_metadata_json(m))}


# ---------------------------------------------------------------- reading


def read_matrix(path: Path) -> DistanceMatrix:
    """Read a distance matrix in any of wealy's formats or the original pickle layout."""
    path = Path(path)
    if not path.is_file():
        raise MatrixFileError(f"{path}: distance-matrix file not found")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        return _read_npz(path)
    if head.startswith(_HDF5_MAGIC):
        return _read_hdf5(path)
    if head[:1] == b"\x80" or SUFFIXES.get(path.suffix.lower()) == "pickle":
        return from_original_layout(safe_load(path), str(path))
    raise MatrixFileError(f"{path}: not a distance-matrix file (expected .npz, HDF5 or pickle content)")


def _dtype_words(dtype: np.dtype) -> str:
    words = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "byte strings", "O": "Python objects",
             "V": "raw records", "M": "dates", "m": "time spans", "T": "strings"}
    if dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None:
        return "strings (HDF5 variable-length strings)"
    return f"{words.get(dtype.kind, 'values')} (dtype {dtype})"


def check_distances(values: Any, source: str, name: str = "distances") -> np.ndarray:
    """The distances as a float32 array, or a ``MatrixFileError`` saying what is wrong (the rule
    is in the module docstring)."""
    try:
        d = np.asarray(values)
    except (ValueError, TypeError, RecursionError) as err:
        raise MatrixFileError(f"{source}: '{name}' is not an array of numbers ({err})") from err
    if d.dtype.kind not in "iuf":
        raise MatrixFileError(f"{source}: '{name}' must hold real numbers (integers or floats), not "
                              f"{_dtype_words(d.dtype)}")
    if d.ndim != 2:
        raise MatrixFileError(f"{source}: '{name}' must be 2-D, got shape {d.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 are found and named below
        d32 = d.astype(np.float32, copy=False)
    finite = np.isfinite(d32)
    if finite.size and finite.all():
        return d32
    for mask, what in ((np.isnan(d32), "NaN"), (d32 == -np.inf, "-inf")):
        if mask.any():
            i, j = np.unravel_index(int(mask.argmax()), mask.shape)
            raise MatrixFileError(f"{source}: '{name}' holds {what} (first at row {i}, column {j}); a distance "
                                  "must be a number, +inf meaning 'never a match'")
    if d.dtype.kind == "f" and d.dtype.itemsize > 4:
        mask = ~finite & np.isfinite(d)
        if mask.any():
            i, j = np.unravel_index(int(mask.argmax()), mask.shape)
            raise MatrixFileError(f"{source}: '{name}' holds {d[i, j]:g} at row {i}, column {j}, beyond "
                                  "float32's range (it would become inf)")
    if not finite.any():
        raise MatrixFileError(f"{source}: '{name}' has no finite entry ({d.shape[0]}×{d.shape[1]}, "
                              "all +inf or empty); nothing could be ranked")
    return d32


def _labels(values: Any, name: str, source: str) -> list[str]:
    """Keys or cliques: a 1-D array of strings or integers, as Python strings."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise MatrixFileError(f"{source}: '{name}' must be a 1-D list of labels, got shape {a.shape}")
    if a.dtype.kind == "S":
        try:
            return [x.decode("utf-8") for x in a.tolist()]
        except UnicodeDecodeError as err:
            raise MatrixFileError(f"{source}: '{name}' holds bytes that are not UTF-8 ({err.reason})") from err
    items = a.tolist()
    if a.dtype.kind not in "UiuO" or (a.dtype.kind == "O" and not all(isinstance(x, str) for x in items)):
        raise MatrixFileError(f"{source}: '{name}' must hold strings or integers, not {_dtype_words(a.dtype)}")
    return [str(x) for x in items]


def _check_declared(sizes: dict[str, int], path: Path) -> None:
    """Refuse before reading when the arrays declare more bytes than a file this size may need."""
    limit = memory_limit(path.stat().st_size)
    if sum(sizes.values()) > limit:
        name = max(sizes, key=sizes.__getitem__)
        raise MatrixFileError(f"{path}: refused: its arrays declare {sum(sizes.values())} bytes ('{name}': "
                              f"{sizes[name]}), more than a {path.stat().st_size}-byte file may need (limit "
                              f"{limit / 2**20:.0f} MiB); the file is damaged or crafted")


def _read_npz(path: Path) -> DistanceMatrix:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            names = [n for n in (*_REQUIRED, "metadata") if n in members]  # other members are never read
            _check_declared({n: _npy_declared_bytes(archive, members[n], n, path) for n in names}, path)
            arrays = {}
            for name in names:
                with archive.open(members[name]) as fh:
                    arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError,
            RuntimeError) as err:  # RuntimeError: an encrypted member
        raise MatrixFileError(f"{path}: unreadable .npz ({type(err).__name__}: {err})") from err
    return _from_arrays(arrays, str(path))


def _npy_declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: Path) -> int:
    """Shape × itemsize from a member's .npy header (read without reading the data)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # bzip2/lzma expand unboundedly
        raise MatrixFileError(f"{path}: '{name}' is compressed with zip method {info.compress_type}; numpy writes "
                              "only stored or deflated members")
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise MatrixFileError(f"{path}: '{name}' uses .npy format {version}, which wealy does not read")
    if dtype.hasobject:
        raise MatrixFileError(f"{path}: '{name}' holds Python objects, which only pickle can read (refused)")
    return math.prod(shape) * dtype.itemsize


def _read_hdf5(path: Path) -> DistanceMatrix:
    try:
        with h5py.File(path, "r") as fh:
            datasets = {name: _dataset(fh, name, path) for name in _REQUIRED}
            _check_declared({n: ds.size * ds.dtype.itemsize for n, ds in datasets.items()}, path)
            if datasets["distances"].dtype.kind not in "iuf":
                raise MatrixFileError(f"{path}: 'distances' must hold real numbers (integers or floats), not "
                                      f"{_dtype_words(datasets['distances'].dtype)}")
            arrays: dict[str, Any] = {"distances": datasets["distances"][()]}
            budget = memory_limit(path.stat().st_size) - sum(ds.size * ds.dtype.itemsize for ds in datasets.values())
            for name in _LABELS:
                arrays[name], used = _hdf5_labels(datasets[name], name, path, budget)
                budget -= used
            if "metadata" in fh.attrs:
                arrays["metadata"] = _hdf5_metadata(fh, path)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise MatrixFileError(f"{path}: unreadable HDF5 file ({type(err).__name__}: {err})") from err
    return _from_arrays(arrays, str(path))


def _dataset(fh: h5py.File, name: str, path: Path) -> h5py.Dataset:
    link = fh.get(name, getlink=True)
    if link is None:
        raise MatrixFileError(f"{path}: not a wealy distance matrix (missing '{name}')")
    if not isinstance(link, h5py.HardLink):
        raise MatrixFileError(f"{path}: '{name}' is a {type(link).__name__}; only datasets stored in the file "
                              "itself are read")
    obj = fh[name]
    if not isinstance(obj, h5py.Dataset):
        kind = "group" if isinstance(obj, h5py.Group) else type(obj).__name__
        raise MatrixFileError(f"{path}: '{name}' is a {kind}, not a dataset")
    if obj.is_virtual or obj.external:
        raise MatrixFileError(f"{path}: '{name}' keeps its data in other files; only data stored in the file "
                              "itself is read")
    if obj.shape is None:
        raise MatrixFileError(f"{path}: '{name}' holds no data (an empty dataspace)")
    return obj


def _hdf5_labels(ds: h5py.Dataset, name: str, path: Path, budget: int) -> tuple[Any, int]:
    """A label dataset's values and the bytes its strings took. Variable-length strings live in
    the file's heap, each at most the file's size: they are read in slices small enough that one
    slice cannot pass ``budget``, which is checked as they come."""
    if ds.ndim != 1:
        raise MatrixFileError(f"{path}: '{name}' must be a 1-D list of labels, got shape {ds.shape}")
    info = h5py.check_string_dtype(ds.dtype)
    if info is None:
        return ds[()], 0
    if info.length is not None:  # fixed-length strings: already counted in the declared size
        return ds.asstr()[()], 0
    step = max(1, min(4096, budget // max(path.stat().st_size, 1)))
    parts, used = [], 0
    for start in range(0, ds.shape[0], step):
        part = ds.asstr()[start:start + step]
        used += sum(len(x) for x in part) + 64 * len(part)
        if used > budget:
            raise MatrixFileError(f"{path}: refused: the strings of '{name}' take more memory than a file this "
                                  f"size may need ({budget / 2**20:.0f} MiB left); the file is damaged or crafted")
        parts.append(part)
    return np.concatenate(parts) if parts else np.array([], dtype=object), used


def _hdf5_metadata(fh: h5py.File, path: Path) -> Any:
    attr = h5py.h5a.open(fh.id, b"metadata")
    if attr.shape != () or h5py.check_string_dtype(attr.dtype) is None:
        raise MatrixFileError(f"{path}: the 'metadata' attribute must be one string, got shape {attr.shape} "
                              f"of {attr.dtype}")
    return fh.attrs["metadata"]


def _from_arrays(arrays: dict[str, Any], source: str) -> DistanceMatrix:
    missing = [name for name in _REQUIRED if name not in arrays]
    if missing:
        raise MatrixFileError(f"{source}: not a wealy distance matrix (missing {', '.join(missing)})")
    distances = check_distances(arrays["distances"], source)
    labels = [_labels(arrays[name], name, source) for name in _LABELS]
    metadata = _parse_metadata(arrays.get("metadata"), source)
    try:
        return DistanceMatrix(distances, *labels, metadata)
    except MatrixFileError as err:
        raise MatrixFileError(f"{source}: {err}") from err


def _parse_metadata(value: Any, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, np.ndarray):
        if value.shape != () or value.dtype.kind not in "US":
            raise MatrixFileError(f"{source}: 'metadata' must be one JSON string, got shape {value.shape} of "
                                  f"{value.dtype}")
        value = value.item()
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MatrixFileError(f"{source}: metadata is not valid JSON ({err.msg})") from err
    except RecursionError as err:
        raise MatrixFileError(f"{source}: metadata nests too deeply to be read") from err
    return data if isinstance(data, dict) else {"value": data}


def from_original_layout(obj: Any, source: str = "<pickle>") -> DistanceMatrix:
    """Convert the original tools' dict (see module docstring) into a ``DistanceMatrix``."""
    if not isinstance(obj, dict):
        raise MatrixFileError(f"{source}: expected a dict with 'distance_matrix', got {type(obj).__name__}")
    missing = [k for k in ("distance_matrix", "query_references", "candidate_references") if k not in obj]
    if missing:
        raise MatrixFileError(f"{source}: not a distance-matrix pickle (missing {', '.join(missing)})")
    distances = check_distances(obj["distance_matrix"], source, "distance_matrix")
    q_keys, q_cliques = _references(obj["query_references"], "matrix_row", distances.shape[0], source)
    c_keys, c_cliques = _references(obj["candidate_references"], "matrix_col", distances.shape[1], source)
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        metadata = {"value": metadata}
    try:
        metadata = json.loads(json.dumps(metadata, default=_json_default))
    except (TypeError, ValueError, RecursionError) as err:
        raise MatrixFileError(f"{source}: 'metadata' cannot be read as JSON-like data ({err})") from err
    try:
        return DistanceMatrix(distances, q_keys, c_keys, q_cliques, c_cliques, metadata)
    except MatrixFileError as err:
        raise MatrixFileError(f"{source}: {err}") from err


def _references(refs: Any, index_name: str, n: int, source: str) -> tuple[list[str], list[str]]:
    """Keys and cliques ordered by the references' row/column index."""
    if not isinstance(refs, (list, tuple)) or len(refs) != n:
        size = len(refs) if isinstance(refs, (list, tuple)) else type(refs).__name__
        raise MatrixFileError(f"{source}: expected {n} references with '{index_name}', got {size}")
    keys: list[str | None] = [None] * n
    cliques: list[str | None] = [None] * n
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or "clique" not in ref or "version" not in ref:
            raise MatrixFileError(f"{source}: reference {i} lacks 'clique'/'version'")
        index = _plain(ref.get(index_name, i))
        if type(index) is not int:
            raise MatrixFileError(f"{source}: reference {i} has a non-integer {index_name} {str(index)[:40]!r}")
        if not 0 <= index < n or keys[index] is not None:
            raise MatrixFileError(f"{source}: reference {i} has a bad or repeated {index_name} {index}")
        values = [_plain(ref["clique"]), _plain(ref["version"]), _plain(ref.get("clique_label", ref["clique"]))]
        if not all(isinstance(v, str | int) for v in values):
            raise MatrixFileError(f"{source}: reference {i} has a clique or version that is neither a string "
                                  "nor an integer")
        keys[index] = make_key(values[0], values[1])
        cliques[index] = str(values[2])
    return [str(k) for k in keys], [str(c) for c in cliques]


def _plain(value: Any) -> Any:
    """numpy scalars → Python (so np.int64(7) gives "7", not "np.int64(7)")."""
    return value.item() if isinstance(value, np.generic) else value
