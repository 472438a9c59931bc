"""Child process for store tests: writes items '<c>/<v>' deterministically, resuming.

usage: python store_writer.py STORE WRITER N [DELAY_S] [ONLY_EVERY K OFFSET]
"""

import sys
import time
from pathlib import Path

import numpy as np

from wealy_cli.core.store import StoreWriter


def item(i: int, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal((5 + i % 7, dim)).astype(np.float16)


def main() -> None:
    store, writer_name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    every, offset = (int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else (1, 0)
    with StoreWriter(store, 16, writer=writer_name, settings={"child": 1}, shard_items=4) as writer:
        for i in range(offset, n, every):
            key = f"{i % 10}/{i}"
            if key in writer:
                continue
            writer.add(key, item(i), clique=str(i % 10), version=str(i))
            print(f"added {key}", flush=True)
            time.sleep(delay)


if __name__ == "__main__":
    main()
