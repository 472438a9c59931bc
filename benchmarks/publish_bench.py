"""Cost of claiming shard numbers (issue 20) against the plain rename it replaced, in one run.

Writes the same items with StoreWriter twice per repeat, interleaved: as it is (claim file with
O_CREAT|O_EXCL, rename, unlink the claim) and with the former publish (rename over the final
name). Prints the median items/s of each and their ratio, for small shards (the worst case: the
claim's extra syscalls weigh most) and for the default shard size with Whisper-like items.

    python benchmarks/publish_bench.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from wealy_cli.core.files import replace_atomically
from wealy_cli.core.store import SHARD_DIR, StoreWriter


class RenameWriter(StoreWriter):
    """The former publish: rename to <writer>-<seq>.h5, whoever else wrote that name."""

    def _publish(self, tmp: Path) -> int:
        replace_atomically(tmp, self.directory / SHARD_DIR / f"{self.writer}-{self._seq:05d}.h5")
        return self._seq


def write(cls: type[StoreWriter], root: Path, items: list[np.ndarray], shard_items: int) -> float:
    start = time.perf_counter()
    with cls(root, items[0].shape[1], settings={"bench": 1}, shard_items=shard_items) as writer:
        for i, array in enumerate(items):
            writer.add(f"c{i % 50}/{i}", array, text="")
    return time.perf_counter() - start


def measure(name: str, items: list[np.ndarray], shard_items: int, repeats: int) -> None:
    times: dict[str, list[float]] = {"claim": [], "rename": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(repeats):
            for label, cls in (("claim", StoreWriter), ("rename", RenameWriter)):
                times[label].append(write(cls, Path(scratch) / f"{label}{r}", items, shard_items))
    claim, rename = (len(items) / statistics.median(times[k]) for k in ("claim", "rename"))
    print(f"{name:34}{claim:12.1f}{rename:12.1f}{claim / rename:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    small = [rng.standard_normal((5, 16)).astype(np.float16) for _ in range(2000)]
    whisper = [rng.standard_normal((int(n), 384)).astype(np.float16) for n in rng.integers(300, 500, 640)]
    print(f"{'items/s, median of ' + str(args.repeats):34}{'claim':>12}{'rename':>12}{'ratio':>8}")
    measure("2000 tiny items, 4 per shard", small, 4, args.repeats)
    measure("640 x ~400 x 384, 64 per shard", whisper, 64, args.repeats)


if __name__ == "__main__":
    main()
