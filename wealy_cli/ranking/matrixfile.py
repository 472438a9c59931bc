"""Distance-matrix files: one matrix plus the version keys and cliques of its rows and columns.

Three formats, chosen by the file suffix when writing and by the file's first bytes when reading:

- ``.npz`` (default, numpy): arrays ``distances`` (float32, n_q × n_c), ``query_keys``,
  ``candidate_keys``, ``query_cliques``, ``candidate_cliques`` (unicode) and ``metadata``
  (a JSON string). Read with ``allow_pickle=False``.
- ``.h5`` / ``.hdf5``: the same datasets (strings UTF-8), metadata as a JSON attribute.
- ``.pkl`` / ``.pickle``: the original research code's layout, a dict with ``distance_matrix``,
  ``query_references`` [{clique, version, matrix_row}], ``candidate_references``
  [{clique, version, matrix_col}] and ``metadata``. Read through ``safepickle.safe_load``, never
  with the plain unpickler.

Version keys are ``"<clique>/<version>"`` (``data.make_key``); rows and columns line up with them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from wealy_cli.core.datasets import make_key
from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import safe_load

MatrixFormat = Literal["npz", "hdf5", "pickle"]
SUFFIXES: dict[str, MatrixFormat] = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5",
                                     ".pkl": "pickle", ".pickle": "pickle"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


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
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as fh:
        fh.create_dataset("distances", data=m.distances)
        for name in ("query_keys", "candidate_keys", "query_cliques", "candidate_cliques"):
            fh.create_dataset(name, data=np.array(getattr(m, name), dtype=object), dtype=text)
        fh.attrs["metadata"] = _metadata_json(m)
        fh.attrs["format"] = "wealy-distance-matrix"


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


def _read_npz(path: Path) -> DistanceMatrix:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as err:  # object arrays need pickle: refused
        raise MatrixFileError(f"{path}: unreadable .npz ({err})") from err
    return _from_arrays(arrays, str(path))


def _read_hdf5(path: Path) -> DistanceMatrix:
    try:
        with h5py.File(path, "r") as fh:
            arrays: dict[str, Any] = {}
            for name in fh:
                ds = fh[name]
                arrays[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            if "metadata" in fh.attrs:
                arrays["metadata"] = fh.attrs["metadata"]
    except OSError as err:
        raise MatrixFileError(f"{path}: unreadable HDF5 file ({err})") from err
    return _from_arrays(arrays, str(path))


def _from_arrays(arrays: dict[str, Any], source: str) -> DistanceMatrix:
    required = ("distances", "query_keys", "candidate_keys", "query_cliques", "candidate_cliques")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise MatrixFileError(f"{source}: not a wealy distance matrix (missing {', '.join(missing)})")
    metadata = _parse_metadata(arrays.get("metadata"), source)
    try:
        return DistanceMatrix(np.asarray(arrays["distances"]), *[list(np.asarray(arrays[n]).tolist())
                                                                  for n in required[1:]], metadata)
    except MatrixFileError as err:
        raise MatrixFileError(f"{source}: {err}") from err


def _parse_metadata(value: Any, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    text = value.item() if isinstance(value, np.ndarray) else value
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        data = json.loads(str(text))
    except json.JSONDecodeError as err:
        raise MatrixFileError(f"{source}: metadata is not valid JSON ({err.msg})") from err
    return data if isinstance(data, dict) else {"value": data}


def from_original_layout(obj: Any, source: str = "<pickle>") -> DistanceMatrix:
    """Convert the original tools' dict (see module docstring) into a ``DistanceMatrix``."""
    if not isinstance(obj, dict):
        raise MatrixFileError(f"{source}: expected a dict with 'distance_matrix', got {type(obj).__name__}")
    missing = [k for k in ("distance_matrix", "query_references", "candidate_references") if k not in obj]
    if missing:
        raise MatrixFileError(f"{source}: not a distance-matrix pickle (missing {', '.join(missing)})")
    distances = np.asarray(obj["distance_matrix"])
    if distances.ndim != 2 or not np.issubdtype(distances.dtype, np.number):
        raise MatrixFileError(f"{source}: 'distance_matrix' must be a 2-D numeric array, "
                              f"got {distances.dtype} with shape {distances.shape}")
    q_keys, q_cliques = _references(obj["query_references"], "matrix_row", distances.shape[0], source)
    c_keys, c_cliques = _references(obj["candidate_references"], "matrix_col", distances.shape[1], source)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        metadata = {"value": metadata}
    metadata = json.loads(json.dumps(metadata, default=_json_default))
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
        index = int(ref.get(index_name, i))
        if not 0 <= index < n or keys[index] is not None:
            raise MatrixFileError(f"{source}: reference {i} has a bad or repeated {index_name} {index}")
        keys[index] = make_key(_plain(ref["clique"]), _plain(ref["version"]))
        cliques[index] = str(_plain(ref.get("clique_label", ref["clique"])))
    return [str(k) for k in keys], [str(c) for c in cliques]


def _plain(value: Any) -> Any:
    """numpy scalars → Python (so np.int64(7) gives "7", not "np.int64(7)")."""
    return value.item() if isinstance(value, np.generic) else value
