"""Synthesised song collections for the demo and the quality benchmark.

A "song" is a lyric text; a "version" is that text spoken by espeak-ng (voice, speed, pitch
vary) over a synthesised chord backing (key, tempo, timbre and loudness vary), optionally
with partial, reordered or changed lyrics, or with a line quoted from another song.
Needs espeak-ng, sox and ffmpeg on PATH (Debian: apt-get install espeak-ng sox ffmpeg).
Generation only: wealy itself ships the generated audio and never needs these tools.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 16000
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3", "en-gb+f2", "en-us+m3",
          "en-gb-x-gbclan", "en-us+f4"]
# Diatonic triads (semitones above the key's root) for a I-V-vi-IV style progression.
PROGRESSIONS = [[0, 7, 9, 5], [0, 5, 7, 0], [9, 5, 0, 7], [0, 9, 5, 7]]
TIMBRES = ["pluck", "sine", "triangle", "square"]


@dataclass
class Rendition:
    """How one version is performed."""

    voice: str
    words_per_minute: int
    pitch: int  # espeak-ng pitch 0..99
    key: int  # semitones above A2 (110 Hz)
    chord_seconds: float
    timbre: str
    music_gain: float  # linear gain of the backing relative to the voice
    lines: list[str] = field(default_factory=list)


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox", "ffmpeg") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (apt-get install espeak-ng sox ffmpeg)")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _speech(text: str, r: Rendition, out: Path) -> None:
    _run(["espeak-ng", "-v", r.voice, "-s", str(r.words_per_minute), "-p", str(r.pitch), "-w", str(out), text])


def _duration(path: Path) -> float:
    out = subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def _backing(seconds: float, r: Rendition, out: Path, tmp: Path) -> None:
    """A looping chord progression: each chord a triad in the version's key and timbre."""
    progression = PROGRESSIONS[r.key % len(PROGRESSIONS)]
    parts = []
    n = max(1, int(seconds / r.chord_seconds) + 1)
    for i in range(n):
        root = 110.0 * 2 ** ((r.key + progression[i % len(progression)]) / 12)
        freqs = [root, root * 2 ** (4 / 12), root * 2 ** (7 / 12)]
        part = tmp / f"chord{i}.wav"
        synth = []
        for f in freqs:
            synth += [r.timbre, f"{f:.2f}"]
        _run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", str(part), "synth", f"{r.chord_seconds:.3f}", *synth,
              "fade", "q", "0.02", f"{r.chord_seconds:.3f}", "0.15", "vol", "0.3"])
        parts.append(str(part))
    joined = tmp / "joined.wav"
    _run(["sox", *parts, str(joined)])
    _run(["sox", str(joined), str(out), "trim", "0", f"{seconds:.3f}"])


def render(r: Rendition, out: Path, max_seconds: float = 20.0, bitrate: str = "24k") -> Path:
    """Speak ``r.lines`` over a backing and write a mono 16 kHz MP3 of at most ``max_seconds``."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        speech = tmp / "speech.wav"
        _speech(" ".join(r.lines), r, speech)
        voice = tmp / "voice.wav"
        _run(["sox", str(speech), "-r", str(SAMPLE_RATE), "-c", "1", str(voice), "pad", "0.5", "0.5"])
        seconds = min(_duration(voice), max_seconds)
        music = tmp / "music.wav"
        _backing(seconds, r, music, tmp)
        mixed = tmp / "mixed.wav"
        _run(["sox", "-m", "-v", "1.0", str(voice), "-v", f"{r.music_gain:.3f}", str(music), str(mixed),
              "trim", "0", f"{seconds:.3f}", "norm", "-1"])
        out.parent.mkdir(parents=True, exist_ok=True)
        _run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(mixed), "-ac", "1", "-ar", str(SAMPLE_RATE),
              "-b:a", bitrate, str(out)])
    return out


def write_collection(path: Path, rows: list[dict[str, str]]) -> None:
    """The collection CSV in wealy's `csv` dataset format (clique,version,path,split + extras)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def random_rendition(rng: random.Random, lines: list[str], music_gain: tuple[float, float] = (0.15, 0.35)) -> Rendition:
    return Rendition(
        voice=rng.choice(VOICES),
        words_per_minute=rng.randint(140, 185),
        pitch=rng.randint(30, 70),
        key=rng.randint(0, 11),
        chord_seconds=rng.choice([0.8, 1.0, 1.2, 1.6]),
        timbre=rng.choice(TIMBRES),
        music_gain=rng.uniform(*music_gain),
        lines=lines,
    )
