"""Training throughput of the paper-size WEALY model at chunk 1500.

Two measurements per input dim (384 = SBERT / Whisper tiny, 1280 = Whisper large-v3/turbo):

- ``step``: one optimisation step on random full-length sequences (forward, NT-Xent, backward,
  clipping, AdamW), median over ``--steps`` timed steps after one warm-up step;
- ``loop``: the real ``wealy train`` loop (Fabric, store reads, random crops, collation) on a
  synthetic store, samples/s as the loop itself reports it (first epoch, warm-up included).

Printed: samples/s (sequences of 1500 rows per second) and the ratios 384 : 1280 and loop : step.

    .venv/bin/python benchmarks/train_bench.py [--device cpu|cuda] [--batch 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wealy_cli.core.datasets import load_split
from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.model.losses import ntxent_loss
from wealy_cli.model.network import ModelConfig, build_model, count_parameters
from wealy_cli.model.options import TrainRun
from wealy_cli.model.training import train

CHUNK = 1500


def step_rate(dim: int, device: str, batch: int, steps: int, bf16: bool) -> float:
    """Median samples/s of bare optimisation steps."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_channels=dim)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    x = torch.randn(batch, CHUNK, dim, device=device)
    mask = torch.ones(batch, CHUNK, dtype=torch.bool, device=device)
    labels = torch.arange(batch, device=device) // 2
    ids = torch.arange(batch, device=device)
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            z = model(x, mask)
        loss = ntxent_loss(z, labels, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def loop_rate(dim: int, device: str, batch: int, steps: int, workdir: Path) -> float:
    """samples/s reported by the real training loop over a synthetic store."""
    rng = np.random.default_rng(0)
    n_cliques = batch * steps // 2 + 2
    rows = ["clique,version,path,split"]
    store_dir = workdir / f"store{dim}"
    with StoreWriter(store_dir, dim, settings={"bench": dim}) as writer:
        for split, n in (("train", n_cliques), ("val", 2)):
            for c in range(n):
                for v in range(2):
                    writer.add(f"{split}{c}/v{v}", rng.normal(size=(CHUNK + 500, dim)).astype(np.float16))
                    rows.append(f"{split}{c},v{v},x,{split}")
    (workdir / f"data{dim}.csv").write_text("\n".join(rows) + "\n")
    store = Store(store_dir)
    train_split = load_split("csv", "train", workdir / f"data{dim}.csv", check_audio=False)
    val_split = load_split("csv", "val", workdir / f"data{dim}.csv", check_audio=False)
    opts = TrainRun(store=store_dir, output=workdir / f"run{dim}", batch_size=batch // 2, max_epochs=1,
                    warmup_epochs=1, limit_batches=steps, loader_workers=0, gpus=1 if device == "cuda" else 0)
    result = train(opts, store, train_split, val_split)
    return float(result.history[-1]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (2 per clique)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = args.device == "cuda"
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'{torch.get_num_threads()} threads'
    print(f"device {args.device} ({where}), "
          f"precision {'bf16-mixed' if bf16 else '32'}, chunk {CHUNK}, batch {args.batch}, {args.steps} timed steps")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dim in (384, 1280):
            params = count_parameters(build_model(ModelConfig(input_channels=dim)))
            step = step_rate(dim, args.device, args.batch, args.steps, bf16)
            print(f"d_in {dim:5d}  {params / 1e6:5.2f} M params  step {step:8.3f} samples/s", flush=True)
            loop = loop_rate(dim, args.device, args.batch, args.steps, Path(tmp))
            results[dim] = (step, loop)
            print(f"d_in {dim:5d}  loop {loop:8.3f} samples/s  loop/step {loop / step:.2f}", flush=True)
    step, loop = (results[384][i] / results[1280][i] for i in (0, 1))
    print(f"ratio 384:1280  step {step:.2f}  loop {loop:.2f}")


if __name__ == "__main__":
    main()
