"""The quality benchmark: the whole pipeline on the harsher synthetic collection, WEALY against
every baseline.

    python benchmarks/quality/generate.py --songs 80 --out runs/quality/collection   # once (espeak-ng, sox, ffmpeg)
    python benchmarks/quality/run.py --collection runs/quality/collection/collection.csv

Runs `wealy demo` on the collection (extract → SBERT → baselines → train → evaluate → distances
→ fuse), which prints the comparison table and writes comparison.json / comparison.png into
--run-dir; finished steps are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, default=Path("runs/quality/collection/collection.csv"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quality/run"))
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not args.collection.is_file():
        sys.exit(f"{args.collection}: not found; generate it first with benchmarks/quality/generate.py")
    cmd = [sys.executable, "-m", "wealy_cli", "demo", "--collection", str(args.collection), "--run-dir",
           str(args.run_dir), "--train-minutes", str(args.train_minutes), "--max-epochs", str(args.max_epochs),
           "--seed", str(args.seed)]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
