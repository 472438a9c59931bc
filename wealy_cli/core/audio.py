"""Audio decoding: any container/codec FFmpeg reads → 16 kHz mono float32, first N seconds.

PyAV ships its own FFmpeg, so no system ffmpeg is needed. Decoding stops once ``max_seconds``
are read (a 10-minute file is not decoded whole), and short files are never padded: padding
with silence makes Whisper transcribe the silence.
"""

from __future__ import annotations

import gc
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16000


class AudioError(Exception):
    """A file that cannot be turned into audio samples; the message is the reason."""


def load_audio(path: Path, max_seconds: float = 300.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 in [-1, 1] at ``sample_rate``, at most ``max_seconds`` long."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("audio file not found")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    limit = int(round(max_seconds * sample_rate))
    try:
        samples = _decode(path, limit, sample_rate)
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as err:
        raise AudioError(f"cannot decode audio ({type(err).__name__}: {err})") from err
    if samples.size == 0:
        raise AudioError("no audio samples decoded")
    return samples


def _decode(path: Path, limit: int, sample_rate: int) -> np.ndarray:
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    with av.open(str(path), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioError("no audio stream")
        frames = container.decode(audio=0)
        while total < limit:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.InvalidDataError:
                continue  # a damaged frame: skip it, as FFmpeg itself does
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += chunk.size
        if total < limit:
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray().reshape(-1))
    del resampler
    gc.collect()  # PyAV resampler objects are otherwise freed late (faster-whisper issue 390)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return audio[:limit].astype(np.float32) / 32768.0
