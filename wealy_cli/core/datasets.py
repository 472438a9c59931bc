"""Dataset adapters: split files → versions with clique, version, audio path and split.

Every version has one stable string key, ``<clique>/<version>``, used across the whole tool
(stores, distance matrices, results), so outputs of different commands always align.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from wealy_cli.core.errors import UserError

SPLITS = ("train", "val", "test")
DATASETS = ("shs", "lyric-covers", "discogs-vi", "csv")


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

    @property
    def key(self) -> str:
        return make_key(self.clique, self.version)


def make_key(clique: object, version: object) -> str:
    return f"{clique}/{version}"


def split_key(key: str) -> tuple[str, str]:
    clique, _, version = key.partition("/")
    return clique, version


@dataclass
class DatasetSplit:
    """The versions of one split after the clique rules, plus what was dropped and why."""

    name: str
    split: str
    versions: list[Version]
    dropped_small_cliques: int = 0
    dropped_leaked_versions: int = 0
    missing_audio: list[Version] = field(default_factory=list)

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
    for rec in _read_csv(path, required=("id", "label")):
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
    for rec in _read_csv(metadata, required=("clique", "version", "path")):
        rec_split = (rec.get("split") or "test").strip() or "test"
        if rec_split not in SPLITS:
            raise DatasetError(f"{metadata}: split {rec_split!r} is not one of {', '.join(SPLITS)}")
        if rec_split != split:
            continue
        audio = Path(rec["path"].strip())
        if not audio.is_absolute():
            audio = (audio_dir or metadata.parent) / audio
        rows.append(Version(rec["clique"].strip(), rec["version"].strip(), audio, split))
    return rows


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
) -> DatasetSplit:
    """Versions of ``split`` after the rules: cliques with < 2 versions dropped; a clique also
    present in train stays in train only. Missing audio files are reported, not dropped."""
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
    leaked = 0
    if split != "train":
        try:
            train_cliques = {v.clique for v in read(metadata, audio_dir, "train")}
        except DatasetError:
            train_cliques = set()  # no train split for this collection: nothing can leak
        before = len(versions)
        versions = [v for v in versions if v.clique not in train_cliques]
        leaked = before - len(versions)
    versions, small = _drop_small_cliques(versions)
    missing = [v for v in versions if v.path is not None and not v.path.is_file()] if check_audio else []
    return DatasetSplit(dataset, split, versions, small, leaked, missing)


def _dedupe(versions: list[Version]) -> list[Version]:
    seen: set[str] = set()
    out = []
    for v in versions:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def _drop_small_cliques(versions: list[Version]) -> tuple[list[Version], int]:
    sizes = Counter(v.clique for v in versions)
    kept = [v for v in versions if sizes[v.clique] >= 2]
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


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
    return list(reader)
