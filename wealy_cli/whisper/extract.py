"""``wealy extract whisper``: audio → transcription + Whisper features → one store item per song.

Per song: decode audio (16 kHz mono, ≤ max_seconds, never padded) → faster-whisper seek loop
(:mod:`wealy_cli.whisper.transcribe`) giving each 30 s window's fed tokens → one teacher-forced PyTorch
pass per window (:mod:`wealy_cli.whisper.model`), windows batched across songs → rows of all windows
in time order, stored fp16 with text, language and window boundaries.

Several processes (``--gpus N`` or ``--workers N``, on ``--nodes M`` machines) are the ranks of
:func:`wealy_cli.core.launch.launch`: rank r takes versions[r::world] of the work list and writes its
own shards (writer ``w<r>``); a rerun skips stored keys. A song that cannot be read never stops
the run: it goes to the store's failure list.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from wealy_cli.core import ui
from wealy_cli.core.audio import AudioError, load_audio
from wealy_cli.core.datasets import MissingSplitError, Version, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.launch import Workers, launch, resolve_devices
from wealy_cli.core.store import StoreWriter
from wealy_cli.whisper.lyrics import sung_rows
from wealy_cli.whisper.model import Whisper, decoder_rows, load_ct2_whisper, load_transformers_whisper
from wealy_cli.whisper.options import WhisperExtractOptions, WhisperFeatureOptions
from wealy_cli.whisper.sources import locate_whisper
from wealy_cli.whisper.transcribe import DecodeOptions, Transcriber, Transcript, open_model, transcribe_many


@dataclass
class Summary:
    total: int = 0
    stored: int = 0
    skipped: int = 0  # already in the store (resume)
    failed: int = 0
    missing_audio: int = 0
    no_lyrics: int = 0
    audio_seconds: float = 0.0
    rows: int = 0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    COUNTS = ("total", "stored", "skipped", "failed", "missing_audio", "no_lyrics", "audio_seconds", "rows",
              "wall_seconds")

    def as_table(self) -> dict[str, object]:
        speed = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return {"versions": self.total, "stored now": self.stored, "already stored (skipped)": self.skipped,
                "failed": self.failed, "of which audio not found": self.missing_audio,
                "no recognised lyrics (stored, flagged)": self.no_lyrics, "rows": self.rows,
                "audio minutes": round(self.audio_seconds / 60, 2), "wall seconds": round(self.wall_seconds, 1),
                "audio seconds per second": round(speed, 2)}


# ---------------------------------------------------------------- models


@dataclass
class LoadedModels:
    transcriber: Transcriber
    network: Whisper
    name: str
    reuse_encoder_output: bool = False


def load_models(settings: WhisperFeatureOptions, device: torch.device, threads: int) -> LoadedModels:
    ct2_dir, torch_dir, kind = locate_whisper(settings.model)
    on_gpu = device.type == "cuda"
    compute_type = resolved_compute_type(settings.compute_type, on_gpu)
    transcriber = open_model(ct2_dir, device="cuda" if on_gpu else "cpu", device_index=device.index or 0,
                             compute_type=compute_type, cpu_threads=threads)
    if on_gpu:
        check_ctranslate2_gpu(transcriber, device)
    if not transcriber.model.is_multilingual and settings.language not in ("auto", "en"):
        raise UserError(f"--language {settings.language}: model {settings.model} is English-only (use en or auto)")
    network = load_ct2_whisper(torch_dir) if kind == "ct2" else load_transformers_whisper(torch_dir)
    dtype = {"auto": torch.float16 if on_gpu else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.precision]
    # float32 CTranslate2 on CPU computes the same encoder output as the PyTorch encoder (≈ 1e-4
    # relative, rows ≈ 2e-6): keep it instead of running the encoder twice.
    reuse = not on_gpu and compute_type == "float32" and dtype == torch.float32
    return LoadedModels(transcriber, network.to(device=device, dtype=dtype), settings.model, reuse)


def check_ctranslate2_gpu(transcriber: Transcriber, device: torch.device) -> None:
    """Encode one silent window on the GPU before any song is read: CTranslate2 loads its CUDA
    libraries (cuBLAS) only at the first product, and without them every song would fail alike."""
    import ctranslate2

    try:
        transcriber.encode(np.zeros((transcriber.model.n_mels, 3000), np.float32))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--gpus: CTranslate2 {ctranslate2.__version__} cannot decode on {device} ({first}); "
                        f"its wheels need CUDA 12 libraries (cuBLAS 12) it can load, e.g. pip install "
                        f"nvidia-cublas-cu12 and that package's lib folder on LD_LIBRARY_PATH") from err


def resolved_compute_type(compute_type: str, on_gpu: bool) -> str:
    """"auto": float32 on CPU (as fast as int8 for the encoder here, and exact), float16 on GPU."""
    if compute_type != "auto":
        return compute_type
    return "float16" if on_gpu else "float32"


# ---------------------------------------------------------------- work list


def work_list(settings: WhisperExtractOptions) -> list[Version]:
    """The dataset's versions (every split for ``--split all``), first ``--limit`` only."""
    splits = ("train", "val", "test") if settings.split == "all" else (settings.split,)
    versions: dict[str, Version] = {}
    for split in splits:
        try:
            part = load_split(settings.dataset, split, settings.metadata, settings.audio_dir, check_audio=False,
                              labelled_only=False)  # a catalogue CSV has unlabelled rows
        except MissingSplitError:
            if settings.split != "all":
                raise
            continue  # this collection has no such split; any other problem with its files is reported
        for v in part.versions:
            versions.setdefault(v.key, v)
    out = list(versions.values())[: settings.limit]
    if out and all(v.path is None for v in out):
        raise UserError(f"dataset {settings.dataset}: --audio-dir (WEALY_AUDIO_DIR) is not set; "
                        "it is needed to find the audio files")
    check_audio_found(out)
    return out


def check_audio_found(versions: list[Version], sample: int = 100) -> None:
    """Stop at once when none of the first ``sample`` audio files exists: the audio folder is
    wrong, and going on would record every song as a failure."""
    first = [v for v in versions[:sample] if v.path is not None]
    if first and not any(v.path.is_file() for v in first):
        where = "--audio-dir" if first[0].path.is_absolute() else "the paths"
        raise UserError(f"none of the first {len(first)} audio files exists (e.g. {first[0].path}); "
                        f"check {where} (WEALY_AUDIO_DIR) and --metadata")


# ---------------------------------------------------------------- one worker


@dataclass
class _Pending:
    version: Version
    transcript: Transcript


def extract_share(settings: WhisperExtractOptions, versions: list[Version], rank: int = 0,
                  device: torch.device | None = None, threads: int = 0,
                  decode: DecodeOptions | None = None, models: LoadedModels | None = None,
                  check: Callable[[], None] = lambda: None) -> Summary:
    """Extract ``versions`` (this worker's share) into the store with writer ``w<rank>``;
    ``check`` is called after every song (it raises to stop the run).

    For measurements (benchmarks/gpu_check.py), never for a store whose content must follow its
    recorded settings: ``decode`` replaces the decoding options the settings imply (language and
    prompt with Whisper's defaults), and ``models`` (from :func:`load_models`) skips loading."""
    start = time.perf_counter()
    device = device or torch.device("cpu")
    summary = Summary(total=len(versions))
    own = models is None
    models = models or load_models(settings, device, threads)
    try:
        _extract(settings, versions, rank, models, summary, decode, check)
    finally:
        if own:  # CTranslate2's thread pool goes now, not at interpreter exit
            del models
            gc.collect()
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _extract(settings: WhisperExtractOptions, versions: list[Version], rank: int, models: LoadedModels,
             summary: Summary, decode: DecodeOptions | None, check: Callable[[], None]) -> None:
    dim = models.network.dims.n_text_state if settings.features == "decoder" else models.network.dims.n_audio_state
    options = decode or DecodeOptions(language=settings.language, initial_prompt=settings.prompt or None)
    pending: list[_Pending] = []
    with StoreWriter(settings.output_dir(), dim, writer=f"w{rank}", settings=settings.content_settings(),
                     kind=f"whisper-{settings.features}") as writer, ui.progress() as bar:
        task = bar.add_task(f"whisper w{rank}", total=len(versions), status="")

        def done() -> None:
            bar.update(task, advance=1, status=f"{summary.failed} failed")
            check()

        def readable() -> Iterator[tuple[Version, np.ndarray]]:
            for version in versions:
                if version.key in writer:
                    summary.skipped += 1
                    done()
                    continue
                try:
                    if version.path is None:
                        raise AudioError("audio file not found")
                    yield version, load_audio(version.path, settings.max_seconds)
                except AudioError as err:
                    _record_failure(version, str(err), writer, summary)
                    done()

        decoded = transcribe_many(models.transcriber, readable(), options, settings.batch_size,
                                  keep_encoder_output=models.reuse_encoder_output)
        for version, transcript in decoded:
            if isinstance(transcript, Exception):
                _record_failure(version, str(transcript), writer, summary)
            elif not transcript.windows:
                _record_failure(version, "too short for Whisper (under one 10 ms frame)", writer, summary)
            else:
                pending.append(_Pending(version, transcript))
            if sum(len(p.transcript.windows) for p in pending) >= settings.batch_size:
                _write_features(pending, models.network, settings, writer, summary)
                pending = []
            done()
        _write_features(pending, models.network, settings, writer, summary)


def _record_failure(version: Version, reason: str, writer: StoreWriter, summary: Summary) -> None:
    writer.fail(version.key, reason, path=str(version.path))
    summary.failed += 1
    summary.missing_audio += reason == "audio file not found"
    summary.failures.append((version.key, reason))


def _write_features(pending: list[_Pending], network: Whisper, settings: WhisperExtractOptions,
                    writer: StoreWriter, summary: Summary) -> None:
    windows = [w for p in pending for w in p.transcript.windows]
    rows = window_features(network, windows, settings.features, settings.batch_size)
    at = 0
    for item in pending:
        t = item.transcript
        parts = rows[at:at + len(t.windows)]
        at += len(t.windows)
        features = np.concatenate(parts, axis=0)
        no_lyrics = not t.text
        writer.add(item.version.key, features, clique=item.version.clique, version=item.version.version,
                   text=t.text, language=t.language, language_probability=round(t.language_probability, 4),
                   duration=round(t.duration, 3), no_lyrics=no_lyrics,
                   windows=[{"start": round(w.start, 3), "end": round(w.end, 3), "rows": len(r),
                             "prompt_tokens": w.n_prompt, "tokens": w.tokens, "temperature": w.temperature,
                             "no_speech": w.no_speech} for w, r in zip(t.windows, parts)],
                   **({"metadata": dict(item.version.meta)} if item.version.meta else {}))
        summary.stored += 1
        summary.no_lyrics += no_lyrics
        summary.audio_seconds += t.duration
        summary.rows += features.shape[0]


def window_features(network: Whisper, windows: list, features: str = "decoder",
                    batch_size: int = 8) -> list[np.ndarray]:
    """Rows per window: decoder rows for the fed tokens, or the encoder output (1500, d).

    The encoder output kept from the CTranslate2 pass is used when present; otherwise the PyTorch
    encoder runs batched (every window has the same shape). The decoder runs once per window
    at its exact length and, on CPU, on one thread: padding to the longest window of a batch or
    another thread count changes the floating-point summation order, and a song's rows must not
    depend on which songs share its batch or how many workers run (stores made with 1 or N
    workers are bitwise identical). It is the cheap part of the pass."""
    param = next(network.parameters())
    out: list[np.ndarray] = []
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        with torch.inference_mode():
            if all(w.audio_features is not None for w in batch):  # kept from the CTranslate2 pass
                encoded = torch.from_numpy(np.stack([w.audio_features for w in batch])).to(param.device, param.dtype)
            else:
                mels = torch.from_numpy(np.stack([w.mel for w in batch])).to(param.device, param.dtype)
                encoded = network.encoder(mels)
            if features == "encoder":
                out.extend(e.float().cpu().numpy() for e in encoded)
                continue
            with _single_thread(param.device.type == "cpu"):
                for j, window in enumerate(batch):
                    (rows,) = decoder_rows(network, None, [window.tokens], audio_features=encoded[j:j + 1])
                    out.append(rows.numpy())
    return out


def recorded_options(content: dict) -> WhisperFeatureOptions:
    """The feature options a store's manifest records (``content_settings``), so that a query
    song is extracted exactly as the store's songs were."""
    return WhisperFeatureOptions(**{k: v for k, v in content.items() if k in WhisperFeatureOptions.model_fields})


def song_features(models: LoadedModels, settings: WhisperFeatureOptions, audio: np.ndarray,
                  batch_size: int = 8, sung_only: bool = False) -> np.ndarray:
    """Feature rows (float32) of one decoded song, computed as ``extract_share`` computes a stored
    song's (``sung_only``: only the rows of sung tokens, as ``lyrics.sung_features`` reads a stored
    song); AudioError when Whisper cannot take it."""
    options = DecodeOptions(language=settings.language, initial_prompt=settings.prompt or None)
    ((_, transcript),) = transcribe_many(models.transcriber, [(0, audio)], options, 1,
                                         keep_encoder_output=models.reuse_encoder_output)
    if isinstance(transcript, Exception):
        raise AudioError(str(transcript))
    if not transcript.windows:
        raise AudioError("too short for Whisper (under one 10 ms frame)")
    rows = np.concatenate(window_features(models.network, transcript.windows, settings.features, batch_size), axis=0)
    if sung_only:
        return rows[sung_rows({"windows": [{"tokens": w.tokens, "prompt_tokens": w.n_prompt}
                                           for w in transcript.windows]})]
    return rows


@contextmanager
def _single_thread(active: bool) -> Iterator[None]:
    """On CPU, short decoder GEMMs split their sums across threads, so results would depend on the
    thread count (1 worker x 2 threads vs 2 workers x 1 thread); one thread makes them identical."""
    before = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- the whole run


def extract_whisper(settings: WhisperExtractOptions) -> Summary | None:
    """Run on every process of the run; returns the combined summary on rank 0, else None."""
    devices = resolve_devices(settings)
    versions = work_list(settings)
    if not versions:
        raise UserError(f"dataset {settings.dataset} split {settings.split}: no versions to extract")
    # One run per store: rank 0 locks it for the whole run.
    with launch(devices, settings.nodes, peer_timeout=settings.peer_timeout,
                lock=(settings.output_dir(), "store")) as workers:
        workers.check_same([v.key for v in versions], "the work list (--dataset, --split, --metadata, --limit)")
        return _extract_all(settings, versions, workers, devices.on_gpu)


def _extract_all(settings: WhisperExtractOptions, versions: list[Version], workers: Workers,
                 on_gpu: bool) -> Summary | None:
    # Processes of one node share its cores (CTranslate2 threads; 0 = its default on GPU).
    threads = 0 if on_gpu or workers.world == 1 else torch.get_num_threads()
    summary = extract_share(settings, workers.share(versions), workers.rank, workers.device, threads,
                            check=workers.check)
    parts = workers.gather_object(summary)
    if parts is None:
        return None
    total = Summary(**{k: sum(getattr(p, k) for p in parts) for k in Summary.COUNTS[:-1]})
    total.failures = [f for p in parts for f in p.failures]
    total.wall_seconds = max(p.wall_seconds for p in parts)  # the slowest worker
    return total
