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
        _run(["sox", "-D", str(speech), "-r", str(SAMPLE_RATE), "-c", "1", str(voice), "pad", "0.5", "0.5"])
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


# ---------------------------------------------------------------- quality benchmark: songs at a set SNR
#
# A richer backing (chords, bass, drums, an optional lead line) synthesised in numpy, mixed under
# the voice at a chosen signal-to-noise ratio (voice RMS over its voiced samples vs. music RMS
# over the same span), with a music-only intro and outro. Everything is drawn from the version's
# own seed, so a collection is reproducible.

ENGLISH_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc"]
VOICE_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak",
                  "klatt", "klatt2", "klatt3", "Annie", "Storm", "Andy", "belinda", "david", "edward",
                  "linda", "max", "paul", "grandpa"]
SONG_PROGRESSIONS = [[0, 7, 9, 5], [0, 5, 7, 0], [9, 5, 0, 7], [0, 9, 5, 7], [0, 5, 9, 7], [2, 7, 0, 0],
                     [0, 3, 5, 5], [9, 7, 5, 7]]
SONG_TIMBRES = ["sine", "triangle", "square", "saw", "organ", "pluck"]


@dataclass
class SongRendition:
    """How one version of a song is performed and mixed."""

    voice: str  # espeak-ng voice (+variant)
    words_per_minute: int
    pitch: int  # espeak-ng pitch 0..99
    word_gap: int  # espeak-ng -g, in 10 ms units
    reverb: int  # sox reverberance 0..100 on the voice (0 = dry)
    key: int  # semitones above A2 (110 Hz)
    bpm: float
    timbre: str
    progression: int
    drums: bool
    lead: bool
    snr_db: float  # voice over music
    intro_seconds: float
    outro_seconds: float
    music_seed: int
    lines: list[str] = field(default_factory=list)


def random_song_rendition(rng: random.Random, lines: list[str], snr_db: tuple[float, float] = (-3.0, 12.0)
                          ) -> SongRendition:
    variant = rng.choice(VOICE_VARIANTS)
    voice = rng.choice(ENGLISH_VOICES) + (f"+{variant}" if variant else "")
    return SongRendition(
        voice=voice, words_per_minute=rng.randint(135, 195), pitch=rng.randint(25, 75),
        word_gap=rng.choice([0, 0, 0, 1, 2, 4]), reverb=rng.choice([0, 0, 0, 30, 60]),
        key=rng.randint(0, 11), bpm=round(rng.uniform(72, 140), 1), timbre=rng.choice(SONG_TIMBRES),
        progression=rng.randrange(len(SONG_PROGRESSIONS)), drums=rng.random() < 0.75, lead=rng.random() < 0.4,
        snr_db=round(rng.uniform(*snr_db), 2), intro_seconds=round(rng.uniform(0.0, 6.0), 2),
        outro_seconds=round(rng.uniform(0.5, 3.0), 2), music_seed=rng.randrange(2**31), lines=list(lines))


def _read_wav(path: Path):
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as fh:
        if fh.getsampwidth() != 2 or fh.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono")
        data = np.frombuffer(fh.readframes(fh.getnframes()), dtype="<i2")
    return data.astype(np.float64) / 32768.0


def _write_wav(path: Path, audio) -> None:
    import wave

    import numpy as np

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(SAMPLE_RATE)
        fh.writeframes(pcm.tobytes())


def _tone(freq: float, seconds: float, timbre: str):
    import numpy as np

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = (freq * t) % 1.0
    if timbre == "sine":
        wave_ = np.sin(2 * np.pi * freq * t)
    elif timbre == "triangle":
        wave_ = 4 * np.abs(phase - 0.5) - 1
    elif timbre == "square":
        wave_ = np.sign(np.sin(2 * np.pi * freq * t)) * 0.6
    elif timbre == "saw":
        wave_ = (2 * phase - 1) * 0.7
    elif timbre == "organ":
        wave_ = sum(np.sin(2 * np.pi * freq * h * t) / h for h in (1, 2, 3, 4)) / 2.0
    else:  # pluck: bright attack, fast decay
        wave_ = (2 * phase - 1) * np.exp(-t * 6.0)
    attack = np.minimum(1.0, t / 0.01)
    release = np.minimum(1.0, (seconds - t) / 0.05).clip(0, 1)
    return wave_ * attack * release


def backing_track(r: SongRendition, seconds: float):
    """Chords, bass, optional drums and lead line: ``seconds`` of music at 16 kHz."""
    import numpy as np

    rng = np.random.default_rng(r.music_seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n + SAMPLE_RATE)
    beat = 60.0 / r.bpm
    chord_beats = 4 if r.bpm < 110 else 8
    progression = SONG_PROGRESSIONS[r.progression]
    t0, i = 0.0, 0
    while t0 < seconds:
        root = 110.0 * 2 ** ((r.key + progression[i % len(progression)]) / 12)
        minor = progression[i % len(progression)] in (2, 4, 9)
        third = 3 if minor else 4
        length = chord_beats * beat
        start = int(t0 * SAMPLE_RATE)
        chord = sum(_tone(root * 2 ** (s / 12), length, r.timbre) for s in (0, third, 7)) / 3
        bass = np.concatenate([_tone(root / 2, beat, "triangle") * np.exp(-np.arange(int(beat * SAMPLE_RATE))
                                                                            / SAMPLE_RATE * 3)
                               for _ in range(chord_beats)])
        seg = 0.5 * chord[: len(bass)] + 0.45 * bass[: len(chord)]
        if r.lead:  # eighth notes on chord tones, an octave or two up
            notes = []
            for _ in range(chord_beats * 2):
                step = int(rng.choice([0, third, 7, 12]))
                notes.append(_tone(root * 2 ** ((12 + step) / 12), beat / 2, "sine") * 0.35)
            lead = np.concatenate(notes)
            m = min(len(seg), len(lead))
            seg[:m] += lead[:m]
        end = min(start + len(seg), len(out))
        out[start:end] += seg[: end - start]
        t0 += length
        i += 1
    if r.drums:
        k = 0
        while k * beat / 2 < seconds:
            start = int(k * beat / 2 * SAMPLE_RATE)
            hat_n = int(0.05 * SAMPLE_RATE)
            hat = np.diff(rng.standard_normal(hat_n + 1)) * np.exp(-np.arange(hat_n) / SAMPLE_RATE * 80) * 0.08
            parts = [hat]
            if k % 4 == 0:  # kick on beats 1 and 3
                kn = int(0.25 * SAMPLE_RATE)
                tt = np.arange(kn) / SAMPLE_RATE
                parts.append(np.sin(2 * np.pi * (50 + 70 * np.exp(-tt * 30)) * tt) * np.exp(-tt * 12) * 0.8)
            elif k % 4 == 2:  # snare on 2 and 4
                sn = int(0.18 * SAMPLE_RATE)
                parts.append(rng.standard_normal(sn) * np.exp(-np.arange(sn) / SAMPLE_RATE * 20) * 0.3)
            for p in parts:
                end = min(start + len(p), len(out))
                out[start:end] += p[: end - start]
            k += 1
    return out[:n]


def _voiced_rms(x) -> float:
    """RMS over 20 ms frames within 40 dB of the loudest frame (speech pauses left out)."""
    import numpy as np

    frame = int(0.02 * SAMPLE_RATE)
    usable = len(x) // frame * frame
    energy = (x[:usable].reshape(-1, frame) ** 2).mean(axis=1)
    keep = energy > energy.max() * 1e-4
    return float(np.sqrt(energy[keep].mean())) if keep.any() else 0.0


def render_song(r: SongRendition, out: Path, bitrate: str = "32k") -> float:
    """Speak ``r.lines`` (espeak-ng), mix over a backing at ``r.snr_db`` with intro/outro, write a
    mono 16 kHz MP3. Returns the duration in seconds."""
    import numpy as np

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        speech = tmp / "speech.wav"
        text = "\n".join(r.lines)
        _run(["espeak-ng", "-v", r.voice, "-s", str(r.words_per_minute), "-p", str(r.pitch), "-g", str(r.word_gap),
              "-w", str(speech), text])
        voice_wav = tmp / "voice.wav"
        effects = ["reverb", str(r.reverb)] if r.reverb else []
        _run(["sox", "-D", str(speech), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(voice_wav), *effects])
        voice = _read_wav(voice_wav)
        intro, outro = int(r.intro_seconds * SAMPLE_RATE), int(r.outro_seconds * SAMPLE_RATE)
        total = intro + len(voice) + outro
        music = backing_track(r, total / SAMPLE_RATE)
        music = np.pad(music, (0, max(0, total - len(music))))[:total]
        span = music[intro:intro + len(voice)]
        v_rms = _voiced_rms(voice)
        m_rms = float(np.sqrt((span ** 2).mean())) or 1.0
        music *= v_rms / m_rms / 10 ** (r.snr_db / 20)
        mixed = music
        mixed[intro:intro + len(voice)] += voice
        mixed *= 10 ** (-1 / 20) / max(np.abs(mixed).max(), 1e-9)  # peak at -1 dBFS
        mixed_wav = tmp / "mixed.wav"
        _write_wav(mixed_wav, mixed)
        out.parent.mkdir(parents=True, exist_ok=True)
        _run(["ffmpeg", "-y", "-loglevel", "error", "-bitexact", "-i", str(mixed_wav), "-ac", "1", "-ar",
              str(SAMPLE_RATE), "-b:a", bitrate, str(out)])
    return total / SAMPLE_RATE
