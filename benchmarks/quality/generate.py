"""Generate the quality-benchmark collection: song-length lyrics, excerpted and noisy versions.

Every song is generated lyrics of 12–24 lines (verses, a chorus built around a repeated hook,
sometimes a pre-chorus or bridge; see ``lyrics.generated_full_song``). Every version is that
song, or a contiguous excerpt of 30–70 % of its lines, spoken by espeak-ng (voice, variant,
speed, pitch, word gap, reverb vary) over a synthesised backing (chords, bass, drums, lead) mixed
at an SNR of -3…12 dB (music louder than the voice for some), with a music-only intro/outro.
On top, independently: sections/lines reordered, words changed, 1–2 lines quoted from another
song, ad-libs (interjections, an extra hook). Songs are split train/val/test BY SONG.

Writes <out>/audio/*.mp3, <out>/collection.csv (wealy's `csv` dataset format plus columns
describing each version) and <out>/songs.json (the lyrics). Needs espeak-ng, sox, ffmpeg and
numpy. Deterministic for a given --seed (and independent of --jobs).

    python benchmarks/quality/generate.py --songs 240 --out runs/quality/collection
"""

from __future__ import annotations

import argparse
import json
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lyrics
import synth


def perform(rng: random.Random, song: list[list[str]], others: list[list[list[str]]],
            full_probability: float = 0.25) -> tuple[list[str], str]:
    """One version's lines and a label of what was done to them (e.g. ``excerpt0.45+changed``)."""
    flat = [line for section in song for line in section]
    labels = []
    if rng.random() < full_probability:
        if rng.random() < 0.2:  # sections in another order
            sections = [list(s) for s in song]
            rng.shuffle(sections)
            flat = [line for s in sections for line in s]
            labels.append("full-reordered")
        else:
            labels.append("full")
        lines = list(flat)
    else:
        fraction = rng.uniform(0.3, 0.7)
        keep = max(3, round(fraction * len(flat)))
        start = rng.randint(0, len(flat) - keep)
        lines = flat[start:start + keep]
        labels.append(f"excerpt{keep / len(flat):.2f}")
        if rng.random() < 0.15:  # pairs of lines in another order
            pairs = [lines[i:i + 2] for i in range(0, len(lines), 2)]
            rng.shuffle(pairs)
            lines = [line for p in pairs for line in p]
            labels.append("reordered")
    if rng.random() < 0.25:
        lines = lyrics.change_words_from(rng, lines, rng.uniform(0.1, 0.3), lyrics.vocabulary())
        labels.append("changed")
    if rng.random() < 0.15:
        other = [line for section in rng.choice(others) for line in section]
        n = rng.choice([1, 2])
        at = rng.randint(0, len(other) - n)
        lines[rng.randint(0, len(lines)):0] = other[at:at + n]
        labels.append("quote")
    if rng.random() < 0.3:
        lines = [f"{line}, {rng.choice(lyrics.INTERJECTIONS)}" if rng.random() < 0.25 else line for line in lines]
        lines.append(song[0][0] if rng.random() < 0.5 else lines[-1])
        labels.append("adlib")
    return lines, "+".join(labels)


def split_songs(n: int, fractions: tuple[float, float, float], rng: random.Random) -> list[str]:
    """Split label of every song: a shuffled ``fractions`` (train, val, test) share of the songs."""
    order = list(range(n))
    rng.shuffle(order)
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    split = [""] * n
    for rank, s in enumerate(order):
        split[s] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=240)
    parser.add_argument("--versions", type=str, default="2:5", help="min:max versions per song")
    parser.add_argument("--split", type=str, default="65:15:20", help="train:val:test percent of the songs")
    parser.add_argument("--snr", type=str, default="-3:12", help="min:max voice-over-music SNR in dB")
    parser.add_argument("--out", type=Path, default=Path("runs/quality/collection"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="plan only: print counts, render nothing")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    songs = [lyrics.generated_full_song(rng) for _ in range(args.songs)]
    fractions = tuple(float(x) / 100 for x in args.split.split(":"))
    split_of = split_songs(len(songs), fractions, rng)
    lo, hi = (int(x) for x in args.versions.split(":"))
    snr = tuple(float(x) for x in args.snr.split(":"))
    jobs, rows = [], []
    for s, song in enumerate(songs):
        others = [o for i, o in enumerate(songs) if i != s]
        for v in range(rng.randint(lo, hi)):
            lines, kind = perform(rng, song, others)
            r = synth.random_song_rendition(rng, lines, snr)
            rel = Path("audio") / f"song{s:03d}-{v}.mp3"
            jobs.append((r, args.out / rel))
            rows.append({"clique": f"song{s:03d}", "version": str(v), "path": str(rel), "split": split_of[s],
                         "kind": kind, "lines": len(lines), "words": sum(len(x.split()) for x in lines),
                         "voice": r.voice, "wpm": r.words_per_minute, "snr_db": f"{r.snr_db:.2f}",
                         "timbre": r.timbre, "drums": int(r.drums), "lead": int(r.lead), "reverb": r.reverb})
    counts = {k: sum(r["split"] == k for r in rows) for k in ("train", "val", "test")}
    songs_per = {k: split_of.count(k) for k in ("train", "val", "test")}
    print(f"{len(rows)} versions of {len(songs)} songs; versions {counts}; songs {songs_per}")
    if args.dry_run:
        words = sum(r["words"] for r in rows)
        print(f"{words} words in all (~{words / 160:.0f} spoken minutes at 160 wpm before intros)")
        return
    synth.check_tools()
    durations = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for i, seconds in enumerate(pool.map(synth.render_song, *zip(*jobs))):
            durations.append(seconds)
            if i % 50 == 0:
                print(f"{i + 1}/{len(jobs)}", flush=True)
    for row, seconds in zip(rows, durations):
        row["seconds"] = f"{seconds:.2f}"
    synth.write_collection(args.out / "collection.csv", rows)
    (args.out / "songs.json").write_text(json.dumps(
        {f"song{s:03d}": {"split": split_of[s], "sections": song} for s, song in enumerate(songs)}, indent=1))
    print(f"{len(rows)} versions of {len(songs)} songs in {args.out}; {sum(durations) / 60:.1f} audio minutes")


if __name__ == "__main__":
    main()
