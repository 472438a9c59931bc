"""Store throughput against the original layout (one .pt file per item, torch.save/torch.load).

Writes N items of ~400 x 1280 float16 rows both ways, then reads R random items both ways.
Prints items/s and MB/s for each, the ratio store/original, and disk size. Repeats each
measurement and reports medians. Both layouts are read from a warm page cache (just written);
run with --drop-caches as root to read cold.

    python benchmarks/store_bench.py --items 2000 --reads 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wealy_cli.core.store import Store, StoreWriter


def make_items(n: int, dim: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(300, 500, size=n)  # ~400 rows, as Whisper decoder features of a song
    return [(f"{i % 500}/{i}", rng.standard_normal((r, dim), dtype=np.float32).astype(np.float16))
            for i, r in enumerate(rows)]


def write_store(root: Path, items: list[tuple[str, np.ndarray]], dim: int) -> float:
    t = time.perf_counter()
    with StoreWriter(root, dim, settings={"bench": 1}) as w:
        for key, arr in items:
            w.add(key, arr, clique=key.split("/")[0], text="")
    return time.perf_counter() - t


def write_pt(root: Path, items: list[tuple[str, np.ndarray]]) -> float:
    t = time.perf_counter()
    for key, arr in items:
        clique, version = key.split("/")
        path = root / clique / version
        path.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(arr), path / "hs_last_seq.pt")
    return time.perf_counter() - t


def read_store(root: Path, keys: list[str]) -> float:
    t = time.perf_counter()
    store = Store(root)  # opening (index of all shards) is part of the cost
    total = 0
    for key in keys:
        total += store[key].shape[0]
    store.close()
    return time.perf_counter() - t


def read_pt(root: Path, keys: list[str]) -> float:
    t = time.perf_counter()
    total = 0
    for key in keys:
        clique, version = key.split("/")
        total += torch.load(root / clique / version / "hs_last_seq.pt", weights_only=True).shape[0]
    return time.perf_counter() - t


def disk_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    items = make_items(args.items, args.dim)
    mb = sum(a.nbytes for _, a in items) / 2**20
    rng = np.random.default_rng(1)
    keys = [items[i][0] for i in rng.integers(0, len(items), size=args.reads)]
    read_mb = sum(dict(items)[k].nbytes for k in keys) / 2**20
    base = Path(tempfile.mkdtemp(dir=args.dir))
    w_store, w_pt, r_store, r_pt = [], [], [], []
    try:
        for rep in range(args.repeats):
            s_dir, p_dir = base / f"store{rep}", base / f"pt{rep}"
            p_dir.mkdir()
            w_store.append(write_store(s_dir, items, args.dim))
            w_pt.append(write_pt(p_dir, items))
            if args.drop_caches:
                drop_caches()
            r_store.append(read_store(s_dir, keys))
            if args.drop_caches:
                drop_caches()
            r_pt.append(read_pt(p_dir, keys))
            sizes = (disk_size(s_dir), disk_size(p_dir))
            if rep < args.repeats - 1:
                shutil.rmtree(s_dir), shutil.rmtree(p_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = statistics.median
    print(f"items: {args.items} x ~400 x {args.dim} float16 ({mb:.0f} MB); random reads: {args.reads}; "
          f"repeats: {args.repeats} (medians); cache: {'cold' if args.drop_caches else 'warm'}")
    print(f"{'':22}{'wealy store':>14}{'one .pt/item':>14}{'ratio':>8}")
    print(f"{'write items/s':22}{args.items / med(w_store):14.1f}{args.items / med(w_pt):14.1f}"
          f"{med(w_pt) / med(w_store):8.2f}")
    print(f"{'write MB/s':22}{mb / med(w_store):14.1f}{mb / med(w_pt):14.1f}")
    print(f"{'random read items/s':22}{args.reads / med(r_store):14.1f}{args.reads / med(r_pt):14.1f}"
          f"{med(r_pt) / med(r_store):8.2f}")
    print(f"{'random read MB/s':22}{read_mb / med(r_store):14.1f}{read_mb / med(r_pt):14.1f}")
    print(f"{'disk MB':22}{sizes[0] / 2**20:14.1f}{sizes[1] / 2**20:14.1f}{sizes[1] / sizes[0]:8.2f}")


if __name__ == "__main__":
    main()
