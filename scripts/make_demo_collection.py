"""Regenerate the bundled demo collection (wealy_cli/data/demo): 24 songs x 3-4 versions.

Public-domain lyrics (benchmarks/quality/lyrics.py) spoken by espeak-ng over synthesised
chords; each version changes voice, speed, pitch, key, tempo and timbre, and some sing only
part of the lyrics or swap its halves. Needs espeak-ng, sox and ffmpeg. Deterministic (seeded).

    python scripts/make_demo_collection.py [--out wealy_cli/data/demo]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "quality"))

import lyrics  # noqa: E402
import synth  # noqa: E402

SPLITS = ["train"] * 14 + ["val"] * 4 + ["test"] * 6


def version_lines(rng: random.Random, lines: list[str], index: int) -> list[str]:
    if index < 2 or len(lines) < 4:
        return list(lines)
    if index == 2:  # a partial performance: drop the first or the last line(s)
        cut = rng.choice([1, 2])
        return lines[cut:] if rng.random() < 0.5 else lines[:-cut]
    half = len(lines) // 2  # verses swapped
    return lines[half:] + lines[:half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "wealy_cli" / "data" / "demo")
    args = parser.parse_args()
    synth.check_tools()
    rng = random.Random(2026)
    rows = []
    songs = list(lyrics.PUBLIC_DOMAIN.items())
    assert len(songs) == len(SPLITS)
    for s, ((name, lines), split) in enumerate(zip(songs, SPLITS)):
        for v in range(4 if s % 2 == 0 else 3):
            rendition = synth.random_rendition(rng, version_lines(rng, lines, v))
            rel = Path("audio") / f"{name}-{v}.mp3"
            synth.render(rendition, args.out / rel)
            rows.append({"clique": name, "version": str(v), "path": str(rel), "split": split,
                         "voice": rendition.voice, "music_gain": f"{rendition.music_gain:.2f}"})
            print(f"{rel}  {split}  {rendition.voice}", flush=True)
    synth.write_collection(args.out / "collection.csv", rows)
    print(f"{len(rows)} versions of {len(songs)} songs in {args.out}")


if __name__ == "__main__":
    main()
