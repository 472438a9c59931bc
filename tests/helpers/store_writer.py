"""Child process for store tests: writes items '<c>/<v>' deterministically, resuming.

usage: python store_writer.py STORE WRITER N [DELAY_S] [ONLY_EVERY K OFFSET] [--lock]
With --lock it holds the store's run lock, as extraction runs do.
"""

import sys
import time
from pathlib import Path

import numpy as np

from wealy_cli.core.lock import run_lock
from wealy_cli.core.store import StoreWriter


def item(i: int, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal((5 + i % 7, dim)).astype(np.float16)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--lock"]
    store, writer_name, n = Path(args[0]), args[1], int(args[2])
    delay = float(args[3]) if len(args) > 3 else 0.0
    every, offset = (int(args[4]), int(args[5])) if len(args) > 5 else (1, 0)
    with run_lock(store, "store", owner="--lock" in sys.argv), \
            StoreWriter(store, 16, writer=writer_name, settings={"child": 1}, shard_items=4) as writer:
        for i in range(offset, n, every):
            key = f"{i % 10}/{i}"
            if key in writer:
                continue
            writer.add(key, item(i), clique=str(i % 10), version=str(i))
            print(f"added {key}", flush=True)
            time.sleep(delay)


if __name__ == "__main__":
    main()
