"""Dataset adapters: split files → versions with clique, version, audio path and split.

Every version has one stable string key, ``<clique>/<version>``, used across the whole tool
(stores, distance matrices, results), so outputs of different commands always align. The clique
never holds a ``/`` (keys are split at the first one).

A user CSV (``--dataset csv``) needs only a ``path`` column. Rows without a clique label are
*unlabelled* (a catalogue to search, not a split to evaluate): each is its own clique, named
after its path, so its key is stable and unique. Columns other than clique, version, path and
split (title, artist, ...) are kept as the version's metadata.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from wealy_cli.core.errors import UserError

SPLITS = ("train", "val", "test")
DATASETS = ("shs", "lyric-covers", "discogs-vi", "csv")
CSV_COLUMNS = ("clique", "version", "path", "split")
UNLABELLED_VERSION = "0"  # the version part of an unlabelled row's key


class DatasetError(UserError, ValueError):
    """A dataset file is missing or malformed (reported as a user error)."""


class MissingSplitError(DatasetError):
    """The dataset has no file for this split (some collections have no val or train split)."""


@dataclass(frozen=True)
class Version:
    clique: str
    version: str
    path: Path | None
    split: str
    labelled: bool = True  # False: a catalogue row without a clique (its own clique, named after its path)
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)  # other CSV columns

    @property
    def key(self) -> str:
        return make_key(self.clique, self.version)


def make_key(clique: object, version: object) -> str:
    return f"{clique}/{version}"


def split_key(key: str) -> tuple[str, str]:
    clique, _, version = key.partition("/")
    return clique, version


def path_clique(path: str) -> str:
    """The clique name of an unlabelled row: its path as written, separators shown as ``:``
    (a clique never holds ``/``), e.g. ``albums/live/song.mp3`` → ``albums:live:song.mp3``."""
    parts = [p for p in path.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    return ":".join(parts)


@dataclass
class DatasetSplit:
    """The versions of one split after the clique rules, plus what was dropped and why."""

    name: str
    split: str
    versions: list[Version]
    dropped_small_cliques: int = 0
    dropped_leaked_versions: int = 0
    missing_audio: list[Version] = field(default_factory=list)
    dropped_unlabelled: int = 0

    @property
    def keys(self) -> list[str]:
        return [v.key for v in self.versions]

    @property
    def cliques(self) -> list[str]:
        return [v.clique for v in self.versions]

    def __len__(self) -> int:
        return len(self.versions)

    def n_cliques(self) -> int:
        return len({v.clique for v in self.versions})

    def summary(self) -> dict[str, object]:
        return {
            "dataset": self.name,
            "split": self.split,
            "versions": len(self.versions),
            "cliques": self.n_cliques(),
            "dropped (clique < 2 versions)": self.dropped_small_cliques,
            "dropped (clique also in train)": self.dropped_leaked_versions,
            "dropped (no clique label)": self.dropped_unlabelled,
            "missing audio": len(self.missing_audio),
            "missing audio examples": [str(v.path) for v in self.missing_audio[:3]],
        }

    def restrict(self, available: Iterable[str]) -> DatasetSplit:
        """Keep versions whose key is in ``available`` and re-apply the ≥ 2 versions rule."""
        avail = set(available)
        kept = [v for v in self.versions if v.key in avail]
        kept, dropped = _drop_small_cliques(kept)
        return DatasetSplit(self.name, self.split, kept, dropped, 0, [])


def bundled_metadata(dataset: str) -> Path | None:
    """Split files shipped with wealy (SHS100K and LyricCovers), or None."""
    root = resources.files("wealy_cli") / "data" / "datasets" / dataset
    path = Path(str(root))
    return path if path.is_dir() else None


# ---------------------------------------------------------------- raw readers (no rules)


def _read_shs(metadata: Path, audio_dir: Path | None, split: str) -> list[Version]:
    path = metadata / f"SHS100K-{split.upper()}"
    rows = []
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DatasetError(f"{path}:{line_no}: expected 'set_id<TAB>ver_id', got {line!r}")
        clique, version = parts[0].strip(), parts[1].strip()
        audio = audio_dir / f"{clique}-{version}.mp3" if audio_dir else None
        rows.append(Version(clique, version, audio, split))
    return rows


def _read_lyric_covers(metadata: Path, audio_dir: Path | None, split: str) -> list[Version]:
    path = metadata / f"{split}_no_dup.csv"
    rows = []
    for _, rec in _read_csv(path, required=("id", "label")):
        version = rec["id"].strip()
        audio = audio_dir / version / f"{version}_audio.mp3" if audio_dir else None
        rows.append(Version(rec["label"].strip(), version, audio, split))
    return rows


def _discogs_file(metadata: Path, split: str) -> Path:
    if metadata.is_file():
        return metadata
    candidates = sorted(metadata.glob(f"*light.json.{split}")) + sorted(metadata.glob(f"*{split}.json"))
    if not candidates:
        raise MissingSplitError(
            f"{metadata}: no Discogs-VI file for split {split!r} "
            f"(expected '*light.json.{split}' or '*{split}.json')"
        )
    return candidates[0]


def _read_discogs_vi(metadata: Path, audio_dir: Path | None, split: str) -> list[Version]:
    path = _discogs_file(metadata, split)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object {{clique_id: [versions]}}")
    rows = []
    for clique, versions in data.items():
        for item in versions:
            try:
                version, youtube_id = str(item["version_id"]), str(item["youtube_id"])
            except (KeyError, TypeError) as err:
                raise DatasetError(f"{path}: clique {clique}: each version needs version_id and youtube_id") from err
            audio = audio_dir / youtube_id[:2] / f"{youtube_id}.mp3" if audio_dir else None
            rows.append(Version(str(clique), version, audio, split))
    return rows


def _read_user_csv(metadata: Path, audio_dir: Path | None, split: str) -> list[Version]:
    rows = []
    seen: dict[str, tuple[int, str]] = {}  # key → (line, path): two paths must not share a key
    for line, rec in _read_csv(metadata, required=("path",), known=CSV_COLUMNS):
        rec_split = (rec.get("split") or "").strip() or "test"
        if rec_split not in SPLITS:
            raise DatasetError(f"{metadata}:{line}: split {rec_split!r} is not one of {', '.join(SPLITS)}")
        written = rec["path"].strip()
        if not written:
            raise DatasetError(f"{metadata}:{line}: the path is empty")
        version = _csv_version(metadata, line, rec, written)
        earlier = seen.setdefault(version.key, (line, written))
        if earlier[1] != written and not version.labelled:
            raise DatasetError(f"{metadata}:{line}: path {written!r} gives the same key {version.key!r} as "
                               f"{earlier[1]!r} on line {earlier[0]}; give these rows a clique and version")
        if rec_split != split:
            continue
        audio = Path(written)
        if not audio.is_absolute():
            audio = (audio_dir or metadata.parent) / audio
        rows.append(Version(version.clique, version.version, audio, split, version.labelled, version.meta))
    return rows


def _csv_version(metadata: Path, line: int, rec: dict[str, str], written: str) -> Version:
    """Clique and version of one CSV row (path-derived where the row has no labels), and its
    other columns as metadata."""
    clique = (rec.get("clique") or "").strip()
    version = (rec.get("version") or "").strip()
    meta = {k: v.strip() for k, v in rec.items() if k not in CSV_COLUMNS and v and v.strip()}
    if "/" in clique:
        raise DatasetError(f"{metadata}:{line}: clique {clique!r} holds a '/', which separates clique and "
                           "version in keys")
    if not clique:
        name = path_clique(written)
        if not name:
            raise DatasetError(f"{metadata}:{line}: path {written!r} names no file")
        return Version(name, version or UNLABELLED_VERSION, None, "", labelled=False, meta=meta)
    return Version(clique, version or path_clique(written), None, "", meta=meta)


_READERS = {
    "shs": _read_shs,
    "lyric-covers": _read_lyric_covers,
    "discogs-vi": _read_discogs_vi,
    "csv": _read_user_csv,
}


# ---------------------------------------------------------------- public entry point


def load_split(
    dataset: str,
    split: str,
    metadata: Path | None = None,
    audio_dir: Path | None = None,
    check_audio: bool = True,
    labelled_only: bool = True,
) -> DatasetSplit:
    """Versions of ``split`` after the rules: cliques with < 2 versions dropped; a clique also
    present in train stays in train only. Missing audio files are reported, not dropped.

    Unlabelled rows (a catalogue CSV) are dropped with ``labelled_only`` (evaluation and
    training need cliques; a split of unlabelled rows only is an error); otherwise they are
    kept, exempt from the rules (each is a clique of one)."""
    if dataset not in _READERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if metadata is None:
        metadata = bundled_metadata(dataset)
        if metadata is None:
            raise DatasetError(f"dataset {dataset!r} needs --metadata (its split files are not bundled)")
    if not metadata.exists():
        raise DatasetError(f"{metadata}: metadata path does not exist")
    read = _READERS[dataset]
    versions = _dedupe(read(metadata, audio_dir, split))
    unlabelled = sum(not v.labelled for v in versions)
    if labelled_only and unlabelled:
        if unlabelled == len(versions):
            raise DatasetError(f"{metadata}: the {split} rows have no clique column or values; evaluation and "
                               "training need labelled versions (columns clique and version); an unlabelled "
                               "catalogue is for 'wealy index build' and 'wealy search'")
        versions = [v for v in versions if v.labelled]
    leaked = 0
    if split != "train":
        try:
            train_cliques = {v.clique for v in read(metadata, audio_dir, "train") if v.labelled}
        except DatasetError:
            train_cliques = set()  # no train split for this collection: nothing can leak
        before = len(versions)
        versions = [v for v in versions if not v.labelled or v.clique not in train_cliques]
        leaked = before - len(versions)
    versions, small = _drop_small_cliques(versions)
    missing = [v for v in versions if v.path is not None and not v.path.is_file()] if check_audio else []
    return DatasetSplit(dataset, split, versions, small, leaked, missing,
                        dropped_unlabelled=unlabelled if labelled_only else 0)


def _dedupe(versions: list[Version]) -> list[Version]:
    seen: set[str] = set()
    out = []
    for v in versions:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def _drop_small_cliques(versions: list[Version]) -> tuple[list[Version], int]:
    """Drop labelled versions whose clique has < 2 versions (unlabelled ones are kept)."""
    sizes = Counter(v.clique for v in versions)
    kept = [v for v in versions if sizes[v.clique] >= 2 or not v.labelled]
    return kept, len(versions) - len(kept)


def clique_index(versions: Iterable[Version]) -> dict[str, list[int]]:
    """Clique id → positions of its versions in ``versions``."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(versions):
        index[v.clique].append(i)
    return dict(index)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise MissingSplitError(f"{path}: split file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text") from err


def _read_csv(path: Path, required: tuple[str, ...],
              known: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a comma-separated file with a header; a file separated by another
    character, a missing column or a row with the wrong number of fields is a DatasetError."""
    text = _read_text(path)
    lines = text.splitlines()
    header = lines[0] if lines else ""
    _check_delimiter(path, header, required + known)
    reader = csv.DictReader(lines)
    found = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = found
    missing = [c for c in required if c not in found]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; found {found}")
    for rec in reader:
        line = reader.line_num
        if None in rec:
            raise DatasetError(f"{path}:{line}: {len(found) + len(rec[None])} fields, the header has {len(found)} "
                               "(quote values that hold commas)")
        if any(v is None for v in rec.values()):
            raise DatasetError(f"{path}:{line}: {sum(v is not None for v in rec.values())} fields, "
                               f"the header has {len(found)}")
        yield line, rec


def _check_delimiter(path: Path, header: str, expected: tuple[str, ...]) -> None:
    """A header that splits on ';' or a tab (and not on ',') into known column names is a CSV
    saved with another separator."""
    if "," in header:
        return
    for sep, name in ((";", "semicolon"), ("\t", "tab")):
        names = [c.strip().strip('"') for c in header.split(sep)]
        if len(names) > 1 and any(n in expected for n in names):
            raise DatasetError(f"{path}:1: the header is {name}-separated ({header!r}); wealy reads "
                               "comma-separated files (save as CSV with ',' as the separator)")
