"""CLEWS embedding cost: CPU seconds per audio minute with the full-size (published) model.

Embeds a synthetic 60 s signal (9 shingles of 20 s every 5 s; a long song has 12 shingles per
minute, so per-minute figures are also given per 12 shingles) and reports medians over repeats:

- batched:  wealy's path, shingles in batches of --batch-size;
- peer:     the same model one shingle at a time (batch 1), measured in the same run;
- CQT only: the front end alone, to show where the time goes.

Also times bpwr-5 song distances for 117 x 117 shingle songs (the 600 s cap).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/clews_bench.py [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wealy_cli.clews.distances import block_distances, reduce_pairs
from wealy_cli.clews.model import ClewsModel, shingle

SR = 16000


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (process) seconds of ``fn()``."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--batch-size", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = ClewsModel().to(args.device).eval()
    audio = torch.randn(int(args.seconds * SR)) * 0.1
    shingles = shingle(audio, 20 * SR, 5 * SR).contiguous().to(args.device)
    n = shingles.shape[0]
    minutes = args.seconds / 60
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.seconds:.0f} s audio = {n} shingles, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")

    @torch.inference_mode()
    def batched() -> None:
        for i in range(0, n, args.batch_size):
            model(shingles[i:i + args.batch_size])

    @torch.inference_mode()
    def one_by_one() -> None:
        for i in range(n):
            model(shingles[i:i + 1])

    @torch.inference_mode()
    def cqt_only() -> None:
        model.spectrogram(shingles)

    with torch.inference_mode():
        model(shingles[:1])  # warm-up
    rows = []
    for name, fn in (("batched", batched), ("peer: batch 1", one_by_one), ("CQT only", cqt_only)):
        wall, cpu = timed(fn, args.repeats)
        rows.append((name, wall, cpu))
        # a long song has 12 shingles per minute (one every 5 s); a 60 s song has 9
        print(f"{name:14s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  | cpu s per audio minute: "
              f"{cpu / minutes:6.2f} ({args.seconds:.0f} s songs), {cpu / n * 12:6.2f} (long songs, 12 shingles)  "
              f"| wall s per long-song minute {wall / n * 12:6.2f}")
    print(f"ratio batch-1 / batched wall: {rows[1][1] / rows[0][1]:.2f}; CQT share of batched wall: "
          f"{rows[2][1] / rows[0][1]:.1%}")

    q = torch.randn(8, 117, 2048, device=args.device)
    c = torch.randn(8, 117, 2048, device=args.device)
    wall, _ = timed(lambda: reduce_pairs(block_distances(q, c), "bpwr-5"), args.repeats)
    print(f"bpwr-5, 117x117 shingles: {wall / 64 * 1e3:.2f} ms per song pair (blocks of 8x8)")
    wall_min, _ = timed(lambda: reduce_pairs(block_distances(q, c), "min"), args.repeats)
    print(f"peer min, same data:      {wall_min / 64 * 1e3:.2f} ms per song pair; bpwr-5 / min = "
          f"{wall / wall_min:.2f}")


if __name__ == "__main__":
    main()
