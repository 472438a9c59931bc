"""Generate the quality-benchmark collection: harsher than the demo.

More songs (public-domain lyrics plus generated lyrics), louder backing music, partial and
reordered lyrics, changed words, and versions that quote a line of another song. Writes
<out>/audio/*.mp3 and <out>/collection.csv (the `csv` dataset format with train/val/test).
Needs espeak-ng, sox and ffmpeg. Deterministic for a given --seed.

    python benchmarks/quality/generate.py --songs 80 --out runs/quality/collection
"""

from __future__ import annotations

import argparse
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lyrics
import synth


def perform(rng: random.Random, lines: list[str], other: list[str]) -> tuple[list[str], str]:
    """One version's lyrics and a label of what was done to them."""
    kind = rng.choice(["full", "partial", "reordered", "changed", "quote"])
    out = list(lines)
    if kind == "partial":
        keep = max(2, int(len(out) * rng.uniform(0.4, 0.7)))
        start = rng.randint(0, len(out) - keep)
        out = out[start:start + keep]
    elif kind == "reordered":
        rng.shuffle(out)
    elif kind == "changed":
        out = lyrics.change_words(rng, out, fraction=0.25)
    elif kind == "quote":  # a line of another song, inserted in the middle
        out.insert(len(out) // 2, rng.choice(other))
    return out, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=80)
    parser.add_argument("--versions", type=str, default="2:5", help="min:max versions per song")
    parser.add_argument("--out", type=Path, default=Path("runs/quality/collection"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    synth.check_tools()
    rng = random.Random(args.seed)
    songs = [lines for _, lines in lyrics.PUBLIC_DOMAIN.items()]
    while len(songs) < args.songs:
        songs.append(lyrics.generated_song(rng, n_lines=rng.randint(4, 7)))
    songs = songs[:args.songs]
    order = list(range(len(songs)))
    rng.shuffle(order)
    n_train, n_val = int(0.6 * len(songs)), int(0.15 * len(songs))
    split_of = {s: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, s in enumerate(order)}
    lo, hi = (int(x) for x in args.versions.split(":"))
    jobs, rows = [], []
    for s, lines in enumerate(songs):
        for v in range(rng.randint(lo, hi)):
            other = songs[rng.choice([i for i in range(len(songs)) if i != s])]
            sung, kind = perform(rng, lines, other) if v > 0 else (list(lines), "full")
            rendition = synth.random_rendition(rng, sung, music_gain=(0.3, 0.7))
            rel = Path("audio") / f"song{s:03d}-{v}.mp3"
            jobs.append((rendition, args.out / rel))
            rows.append({"clique": f"song{s:03d}", "version": str(v), "path": str(rel), "split": split_of[s],
                         "kind": kind, "voice": rendition.voice, "music_gain": f"{rendition.music_gain:.2f}"})
    with ProcessPoolExecutor(args.jobs) as pool:
        for i, _ in enumerate(pool.map(synth.render, *zip(*jobs))):
            if i % 20 == 0:
                print(f"{i + 1}/{len(jobs)}", flush=True)
    synth.write_collection(args.out / "collection.csv", rows)
    print(f"{len(rows)} versions of {len(songs)} songs in {args.out}")


if __name__ == "__main__":
    main()
