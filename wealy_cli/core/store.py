"""Sharded HDF5 embedding store.

Layout of a store directory::

    manifest.json            dim, kind, extraction settings and their hash (written once)
    .wealy.lock              the run lock (core/lock.py): one run writes a store at a time
    shards/<writer>-<n>.h5   finished shards; each holds many items
    shards/.<name>.*.tmp     a shard being written (never read; left behind only by a crash)
    shards/.<name>.claim     <name> is being published (left behind only by a crash)
    failures/<writer>.jsonl  keys that could not be produced, one JSON object per line

A shard holds ``data`` (rows × dim, float16) with the items' rows concatenated, ``offsets``
(n + 1), ``keys`` (n) and ``meta`` (n JSON strings: clique, version, text, language, ...).
A writer buffers items and writes a whole shard at once to a temporary name, flushes,
fsyncs and renames it: a shard is either complete and visible or not there at all, so a
crash loses at most the items of the open shard. A shard's number is claimed with an
exclusive create (``O_CREAT | O_EXCL``) before the rename, so two writers that happen to share
a name (two runs, two hosts) take different numbers and never replace each other's shards.
Each process of a run has its own writer name (``w<rank>``) and its own share of the keys;
resuming skips keys already stored. Runs themselves are kept apart by the run lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wealy_cli.core.errors import UserError
from wealy_cli.core.files import fsync_dir
from wealy_cli.core.lock import active_holder

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
FAILURE_DIR = "failures"
_SHARD_RE = re.compile(r"^(?P<writer>[A-Za-z0-9_.-]+)-(?P<seq>\d{5,})\.h5$")


class StoreError(UserError, ValueError):
    """A store is missing, malformed, or was made with other settings (a user error)."""


def settings_hash(settings: dict[str, Any]) -> str:
    """Stable short hash of the settings that determine an item's content."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _unique_suffix() -> str:
    """Host, pid and a random part: distinct for every writer, also across hosts on a shared disk."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


def _shard_paths(directory: Path) -> list[Path]:
    shard_dir = directory / SHARD_DIR
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if _SHARD_RE.match(p.name))


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory}: not a wealy store (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: manifest is not valid JSON ({err.msg})") from err


# ---------------------------------------------------------------- writing


class StoreWriter:
    """Appends items to a store; one instance per process, each with a distinct ``writer`` name.

    ``settings`` (the extraction settings) are recorded in the manifest on creation; opening an
    existing store with different settings raises :class:`StoreError` so that items made with
    different settings never mix.
    """

    def __init__(
        self,
        directory: Path,
        dim: int,
        writer: str = "w0",
        settings: dict[str, Any] | None = None,
        kind: str = "features",
        shard_items: int = 64,
        shard_bytes: int = 256 * 2**20,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", writer):
            raise ValueError(f"writer name {writer!r} may hold only letters, digits, '_' and '.'")
        self.directory = Path(directory)
        self.dim = int(dim)
        self.writer = writer
        self.settings = dict(settings or {})
        self.hash = settings_hash(self.settings)
        self.shard_items = shard_items
        self.shard_bytes = shard_bytes
        (self.directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (self.directory / FAILURE_DIR).mkdir(parents=True, exist_ok=True)
        self._ensure_manifest(kind)
        self._stored = set(Store(self.directory).keys())
        self._buffer: list[tuple[str, np.ndarray, dict[str, Any]]] = []
        self._buffer_bytes = 0
        self._seq = self._next_seq()

    def _ensure_manifest(self, kind: str) -> None:
        manifest = {
            "format": "wealy-store",
            "version": 1,
            "dim": self.dim,
            "dtype": "float16",
            "kind": kind,
            "settings": self.settings,
            "settings_hash": self.hash,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = self.directory / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.{_unique_suffix()}.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        try:
            os.link(tmp, path)  # atomic create-if-absent: concurrent writers agree on one manifest
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        existing = _read_manifest(self.directory)
        if existing.get("settings_hash") != self.hash or int(existing.get("dim", -1)) != self.dim:
            raise StoreError(
                f"{self.directory}: store was made with other settings "
                f"(hash {existing.get('settings_hash')}, dim {existing.get('dim')}; "
                f"now {self.hash}, dim {self.dim}); use a new output directory"
            )

    def _next_seq(self) -> int:
        seqs = [int(m["seq"]) for p in _shard_paths(self.directory)
                if (m := _SHARD_RE.match(p.name)) and m["writer"] == self.writer]
        return max(seqs, default=-1) + 1

    def __contains__(self, key: str) -> bool:
        return key in self._stored

    def add(self, key: str, features: np.ndarray, **attrs: Any) -> None:
        """Queue one item; it becomes durable when its shard is written."""
        if key in self._stored:
            raise StoreError(f"key {key!r} is already stored")
        array = np.asarray(features)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise StoreError(f"item {key!r}: expected shape (rows, {self.dim}), got {array.shape}")
        array = array.astype(np.float16, copy=False)
        attrs = {**attrs, "settings_hash": self.hash}
        self._buffer.append((key, array, attrs))
        self._stored.add(key)
        self._buffer_bytes += array.nbytes
        if len(self._buffer) >= self.shard_items or self._buffer_bytes >= self.shard_bytes:
            self.flush()

    def fail(self, key: str, reason: str, **attrs: Any) -> None:
        """Record that ``key`` could not be produced (appended and fsynced at once)."""
        record = {"key": key, "reason": reason, "writer": self.writer, "time": time.time(), **attrs}
        path = self.directory / FAILURE_DIR / f"{self.writer}.jsonl"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def flush(self) -> None:
        """Write the buffered items as one complete shard (temporary name, fsync, claimed rename)."""
        if not self._buffer:
            return
        name = f"{self.writer}-{self._seq:05d}.h5"
        tmp = self.directory / SHARD_DIR / f".{name}.{_unique_suffix()}.tmp"  # never shared with another writer
        arrays = [a for _, a, _ in self._buffer]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.shape[0] for a in arrays], out=offsets[1:])
        with h5py.File(tmp, "w") as h5:
            h5.attrs["dim"] = self.dim
            data = h5.create_dataset("data", shape=(int(offsets[-1]), self.dim), dtype=np.float16)
            for i, array in enumerate(arrays):  # slice by slice: no concatenated copy in memory
                if len(array):
                    data[offsets[i]:offsets[i + 1]] = array
            h5.create_dataset("offsets", data=offsets)
            h5.create_dataset("keys", data=[k for k, _, _ in self._buffer], dtype=h5py.string_dtype())
            h5.create_dataset("meta", data=[json.dumps(m, default=str) for _, _, m in self._buffer],
                              dtype=h5py.string_dtype())
            h5.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        self._seq = self._publish(tmp) + 1
        self._buffer.clear()
        self._buffer_bytes = 0

    def _publish(self, tmp: Path) -> int:
        """Rename ``tmp`` to the first free ``<writer>-<n>.h5`` from this writer's next number on;
        returns n. The claim file makes the choice exclusive among writers of the same name."""
        shard_dir = self.directory / SHARD_DIR
        seq = self._seq
        while True:
            name = f"{self.writer}-{seq:05d}.h5"
            claim = shard_dir / f".{name}.claim"
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:  # another writer is publishing this number right now
                seq += 1
                continue
            try:
                if (shard_dir / name).exists():  # published earlier (its claim is already gone)
                    seq += 1
                    continue
                os.replace(tmp, shard_dir / name)
                fsync_dir(shard_dir)
                return seq
            finally:
                claim.unlink()  # after the rename: a later writer then sees the shard itself

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Location:
    shard: int
    index: int
    start: int
    stop: int


class Store:
    """Read-only view of a store: random access by key without loading the whole store.

    HDF5 handles are opened lazily and reopened after a fork, so a Store may be handed to
    DataLoader worker processes.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise StoreError(f"{self.directory}: store directory does not exist")
        self.manifest = _read_manifest(self.directory)
        self.shards = _shard_paths(self.directory)
        self._index: dict[str, _Location] = {}
        self._meta_cache: dict[int, list[str]] = {}
        self.duplicates: list[str] = []
        for s, path in enumerate(self.shards):
            try:
                with h5py.File(path, "r") as h5:
                    keys = h5["keys"].asstr()[...]
                    offsets = h5["offsets"][...]
            except (OSError, KeyError) as err:
                raise StoreError(f"{path}: shard cannot be read ({err}); run 'wealy store verify'") from err
            for i, key in enumerate(keys):
                if key in self._index:
                    self.duplicates.append(key)
                    continue
                self._index[key] = _Location(s, i, int(offsets[i]), int(offsets[i + 1]))
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    # -- metadata
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.manifest.get("settings", {}))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return list(self._index)

    def rows(self, key: str) -> int:
        loc = self._locate(key)
        return loc.stop - loc.start

    def row_counts(self) -> np.ndarray:
        return np.array([loc.stop - loc.start for loc in self._index.values()], dtype=np.int64)

    # -- data
    def _handle(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: never reuse the parent's HDF5 handles
            self._handles = {}
            self._pid = os.getpid()
        h5 = self._handles.get(shard)
        if h5 is None:
            h5 = self._handles[shard] = h5py.File(self.shards[shard], "r")
        return h5

    def _locate(self, key: str) -> _Location:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in store {self.directory}") from None

    def __getitem__(self, key: str) -> np.ndarray:
        loc = self._locate(key)
        return self._handle(loc.shard)["data"][loc.start:loc.stop]

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of an item, reading only those rows from disk."""
        loc = self._locate(key)
        n = loc.stop - loc.start
        start, stop, _ = slice(start, stop).indices(n)
        return self._handle(loc.shard)["data"][loc.start + start:loc.start + max(start, stop)]

    def attrs(self, key: str) -> dict[str, Any]:
        loc = self._locate(key)
        meta = self._meta_cache.get(loc.shard)
        if meta is None:
            meta = self._meta_cache[loc.shard] = list(self._handle(loc.shard)["meta"].asstr()[...])
        return json.loads(meta[loc.index])

    def items(self) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
        """All items, shard by shard (each shard's data read once)."""
        by_shard: dict[int, list[tuple[str, _Location]]] = {}
        for key, loc in self._index.items():
            by_shard.setdefault(loc.shard, []).append((key, loc))
        for shard, entries in by_shard.items():
            h5 = self._handle(shard)
            data = h5["data"][...]
            meta = h5["meta"].asstr()[...]
            for key, loc in entries:
                yield key, data[loc.start:loc.stop], json.loads(meta[loc.index])

    def failures(self) -> dict[str, dict[str, Any]]:
        """Latest failure record per key, excluding keys that were produced later."""
        out: dict[str, dict[str, Any]] = {}
        fail_dir = self.directory / FAILURE_DIR
        for path in sorted(fail_dir.glob("*.jsonl")) if fail_dir.is_dir() else []:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                out[record["key"]] = record
        return {k: v for k, v in out.items() if k not in self._index}

    def close(self) -> None:
        for h5 in self._handles.values():
            h5.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        state["_meta_cache"] = {}
        return state


# ---------------------------------------------------------------- inspection


@dataclass
class StoreReport:
    items: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(directory: Path, check_values: bool = True, block_rows: int = 65536) -> StoreReport:
    """Check every shard: opens, consistent layout and dims, no duplicate keys, finite values."""
    directory = Path(directory)
    report = StoreReport()
    try:
        manifest = _read_manifest(directory)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    dim = int(manifest.get("dim", -1))
    seen: dict[str, str] = {}
    shard_dir = directory / SHARD_DIR
    holder = active_holder(directory)
    if holder is not None:  # read only: probing the lock could make a starting run fail
        report.warnings.append(f"a run may be writing this store: {holder.describe()}; "
                               "shards it adds later are not checked, its unfinished ones are listed")
    stale = sorted(shard_dir.glob(".*.tmp")) if shard_dir.is_dir() else []
    for path in stale:
        report.warnings.append(f"{path.name}: unfinished shard left by an interrupted writer (ignored)")
    claims = sorted(shard_dir.glob(".*.claim")) if shard_dir.is_dir() else []
    for path in claims:
        report.warnings.append(f"{path.name}: shard number claimed by an interrupted writer (ignored)")
    for path in _shard_paths(directory):
        report.shards += 1
        try:
            with h5py.File(path, "r") as h5:
                data, offsets = h5["data"], h5["offsets"][...]
                keys = list(h5["keys"].asstr()[...])
                n_meta = len(h5["meta"])
                if data.ndim != 2 or data.shape[1] != dim:
                    report.problems.append(f"{path.name}: data has shape {data.shape}, manifest dim {dim}")
                    continue
                if (len(offsets) != len(keys) + 1 or n_meta != len(keys) or offsets[0] != 0
                        or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) < 0)):
                    report.problems.append(f"{path.name}: offsets/keys/meta are inconsistent")
                    continue
                if check_values:
                    for start in range(0, data.shape[0], block_rows):
                        block = data[start:start + block_rows]
                        if not np.isfinite(block).all():
                            bad = int(np.searchsorted(offsets, start + int(np.argwhere(
                                ~np.isfinite(block))[0, 0]), side="right") - 1)
                            report.problems.append(f"{path.name}: item {keys[bad]!r} holds NaN or Inf")
                            break
        except Exception as err:  # any failure to read is a damaged shard
            report.problems.append(f"{path.name}: cannot be read ({type(err).__name__}: {err})")
            continue
        for key in keys:
            if key in seen:
                report.problems.append(f"duplicate key {key!r} in {seen[key]} and {path.name}")
            else:
                seen[key] = path.name
        report.items += len(keys)
    return report


def store_info(store: Store) -> dict[str, Any]:
    rows = store.row_counts()
    size = sum(p.stat().st_size for p in store.shards)
    return {
        "directory": str(store.directory),
        "kind": store.manifest.get("kind"),
        "items": len(store),
        "dim": store.dim,
        "shards": len(store.shards),
        "rows min": int(rows.min()) if len(rows) else 0,
        "rows median": float(np.median(rows)) if len(rows) else 0.0,
        "rows mean": float(rows.mean()) if len(rows) else 0.0,
        "rows max": int(rows.max()) if len(rows) else 0,
        "rows total": int(rows.sum()),
        "size on disk (MB)": round(size / 2**20, 2),
        "failures": len(store.failures()),
        "settings hash": store.manifest.get("settings_hash"),
        "settings": store.settings,
    }


def describe_items(store: Store, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """Key, rows and stored attributes (text, language, duration, windows ...) of ``keys`` (all
    items when None), in store order; an unknown key is a StoreError naming it."""
    wanted = store.keys() if keys is None else list(keys)
    missing = [k for k in wanted if k not in store]
    if missing:
        raise StoreError(f"{store.directory}: no item {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    return [{"key": key, "rows": store.rows(key), **store.attrs(key)} for key in wanted]
