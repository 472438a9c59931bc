"""``wealy extract clews``: CLEWS shingle embeddings of a dataset split into a store.

Each song is decoded to 16 kHz mono (first ``max_seconds``), cut into shingles of
``shingle_seconds`` every ``hop`` seconds (the official test-time cut: 20 s every 5 s, at most
600 s), and every shingle is embedded; the store holds one (shingles x zdim) matrix per song.
Audio is decoded in DataLoader worker processes while the model runs. Several processes
(``--gpus N`` or ``--workers N``, on ``--nodes M`` machines: :func:`wealy_cli.core.launch.launch`)
each take every world-th song and write their own shards (writer ``w<rank>``); a file that
cannot be decoded is recorded as a failure in the store and the run goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wealy_cli.clews.model import SAMPLE_RATE, ClewsModel, load_clews, shingle
from wealy_cli.clews.options import ClewsExtractOptions
from wealy_cli.core import ui
from wealy_cli.core.audio import AudioError, load_audio
from wealy_cli.core.datasets import DatasetSplit, Version, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.launch import launch, resolve_devices
from wealy_cli.core.store import StoreWriter


@dataclass
class ExtractReport:
    stored: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    shingles: int = 0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: ExtractReport) -> None:
        self.stored += other.stored
        self.failed += other.failed
        self.skipped += other.skipped
        self.audio_seconds += other.audio_seconds
        self.shingles += other.shingles
        self.failures += other.failures


def file_sha256(path: Path, chunk: int = 2**22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def store_settings(s: ClewsExtractOptions, zdim: int) -> dict[str, object]:
    """What determines a stored item: a store only ever mixes items made with equal values."""
    return {"features": "clews", "checkpoint_sha256": file_sha256(s.checkpoint), "zdim": zdim,
            "sample_rate": SAMPLE_RATE, "shingle_seconds": s.shingle_seconds, "hop": s.hop,
            "max_seconds": s.max_seconds}


# ---------------------------------------------------------------- embedding


@torch.inference_mode()
def embed_shingles(model: ClewsModel, shingles: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """(S, samples) shingles → (S, zdim) float32 embeddings, ``batch_size`` shingles per pass."""
    device = next(model.parameters()).device
    out = [model(shingles[i:i + batch_size].contiguous().to(device)).float().cpu()
           for i in range(0, shingles.shape[0], batch_size)]
    return torch.cat(out).numpy()


def song_shingles(audio: np.ndarray | torch.Tensor, shingle_seconds: float, hop: float) -> torch.Tensor:
    signal = torch.as_tensor(audio, dtype=torch.float32)
    return shingle(signal, int(round(shingle_seconds * SAMPLE_RATE)), int(round(hop * SAMPLE_RATE)))


def embed_song(model: ClewsModel, audio: np.ndarray | torch.Tensor, shingle_seconds: float, hop: float,
               batch_size: int = 16) -> np.ndarray:
    """(shingles, zdim) float32 embeddings of one 16 kHz mono signal."""
    return embed_shingles(model, song_shingles(audio, shingle_seconds, hop), batch_size)


class _AudioItems(torch.utils.data.Dataset):
    """Decodes songs in DataLoader workers; an undecodable file yields its error message."""

    def __init__(self, versions: list[Version], max_seconds: float) -> None:
        self.versions = versions
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        path = self.versions[i].path
        if path is None:
            return i, None, "no audio path (give --audio-dir)"
        try:
            return i, load_audio(path, max_seconds=self.max_seconds), ""
        except AudioError as err:
            return i, None, str(err)


def _identity(item: object) -> object:
    return item


class _SongBatcher:
    """Collects songs until their shingles fill a batch, so that short songs share forward passes."""

    def __init__(self, model: ClewsModel, writer: StoreWriter, report: ExtractReport, batch_size: int) -> None:
        self.model, self.writer, self.report, self.batch_size = model, writer, report, batch_size
        self.pending: list[tuple[Version, torch.Tensor, float]] = []

    def add(self, version: Version, shingles: torch.Tensor, seconds: float) -> int:
        """Queue a song; returns how many songs were written."""
        self.pending.append((version, shingles, seconds))
        if sum(p[1].shape[0] for p in self.pending) < self.batch_size:
            return 0
        return self.flush()

    def flush(self) -> int:
        if not self.pending:
            return 0
        z = embed_shingles(self.model, torch.cat([p[1] for p in self.pending]), self.batch_size)
        start = 0
        for version, shingles, seconds in self.pending:
            n = shingles.shape[0]
            self.writer.add(version.key, z[start:start + n], clique=version.clique, version=version.version,
                            seconds=round(seconds, 3), shingles=n)
            start += n
            self.report.stored += 1
            self.report.shingles += n
            self.report.audio_seconds += seconds
        done, self.pending = len(self.pending), []
        return done


def _run_part(s: ClewsExtractOptions, versions: list[Version], rank: int, model: ClewsModel,
              settings: dict[str, object], check: Callable[[], None] = lambda: None) -> ExtractReport:
    """Embed ``versions`` with ``model`` into the store with writer name ``w<rank>``; ``check``
    is called after every song (it raises to stop the run)."""
    report = ExtractReport()
    with StoreWriter(s.out, model.config.zdim, writer=f"w{rank}", settings=settings, kind="clews",
                     shard_items=32) as writer:
        todo = [v for v in versions if v.key not in writer]
        report.skipped = len(versions) - len(todo)
        loader = torch.utils.data.DataLoader(_AudioItems(todo, s.max_seconds), batch_size=None,
                                             num_workers=s.loader_workers, collate_fn=_identity)
        batcher = _SongBatcher(model, writer, report, s.batch_size)
        with ui.progress() as bar:
            task = bar.add_task("CLEWS embeddings", total=len(todo), status="")
            for i, audio, error in loader:
                version = todo[i]
                if audio is None:
                    writer.fail(version.key, error, path=str(version.path))
                    report.failed += 1
                    report.failures.append((version.key, error))
                    done = 1
                else:
                    shingles = song_shingles(audio, s.shingle_seconds, s.hop)
                    done = batcher.add(version, shingles, audio.shape[0] / SAMPLE_RATE)
                bar.update(task, advance=done, status=f"{report.failed} failed")
                check()
            bar.update(task, advance=batcher.flush())
    return report


# ---------------------------------------------------------------- entry point


def split_for(s: ClewsExtractOptions) -> DatasetSplit:
    split = load_split(s.dataset, s.split, s.metadata, s.audio_dir, labelled_only=False)
    if s.dataset != "csv" and s.audio_dir is None:
        raise UserError(f"--audio-dir is needed to find the audio of dataset {s.dataset!r}")
    return split


def extract_clews(s: ClewsExtractOptions) -> ExtractReport | None:
    """Embed every version of the split on every process of the run; resume skips versions
    already in the store. Returns the combined report on rank 0, None elsewhere."""
    start = time.time()
    devices = resolve_devices(s)
    split = split_for(s)
    model = load_clews(s.checkpoint)  # checks the checkpoint before the other processes start
    settings = store_settings(s, model.config.zdim)
    with launch(devices, s.nodes, peer_timeout=s.peer_timeout, lock=(s.out, "store")) as workers:  # one run per store
        workers.check_same([v.key for v in split.versions], "the work list (--dataset, --split, --metadata)")
        model = model.to(workers.device)
        part = _run_part(s, workers.share(split.versions), workers.rank, model, settings, workers.check)
        parts = workers.gather_object(part)
    if parts is None:
        return None
    report = ExtractReport()
    for part in parts:
        report.merge(part)
    report.wall_seconds = time.time() - start
    return report
