"""The quality benchmark: the whole pipeline on the harsher synthetic collection, WEALY against
every baseline, everything chosen on validation and measured on test.

    python benchmarks/quality/generate.py --out runs/quality/collection   # once (espeak-ng, sox, ffmpeg)
    python benchmarks/quality/run.py --collection runs/quality/collection/collection.csv

Runs `wealy demo` on the collection (extract → SBERT → baselines on val and test → train the
late-interaction recipe → evaluate → distances on val and test → fusion weight on val → fusion on
test), which prints the comparison table and writes comparison.json / comparison.png into
--run-dir; finished steps are skipped on a rerun. Extraction is the long step (about an hour of
tiny.en on two CPU cores for 813 versions): ``--stores DIR`` starts from the ``whisper`` and
``sbert`` stores of an earlier run of the same collection instead.

    python scripts/readme_tables.py --save quality runs/quality/run/comparison.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def reuse_stores(stores: Path, run_dir: Path) -> None:
    """Copy earlier ``extract whisper`` / ``extract sbert`` stores in and mark those steps done."""
    done = run_dir / ".done"
    done.mkdir(parents=True, exist_ok=True)
    for name, step in (("whisper", "extract-whisper"), ("sbert", "extract-sbert")):
        target = run_dir / "stores" / name
        if not target.exists():
            shutil.copytree(stores / name, target, ignore=shutil.ignore_patterns(".wealy.lock"))
        (done / step).write_text("0\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, default=Path("runs/quality/collection/collection.csv"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quality/run"))
    parser.add_argument("--stores", type=Path, help="whisper/ and sbert/ stores of an earlier extraction")
    parser.add_argument("--train-minutes", type=float, default=30.0, help="the training budget (CPU minutes)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not args.collection.is_file():
        sys.exit(f"{args.collection}: not found; generate it first with benchmarks/quality/generate.py")
    if args.stores is not None:
        reuse_stores(args.stores, args.run_dir)
    cmd = [sys.executable, "-m", "wealy_cli", "demo", "--collection", str(args.collection), "--run-dir",
           str(args.run_dir), "--train-minutes", str(args.train_minutes), "--max-epochs", str(args.max_epochs),
           "--seed", str(args.seed)]
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
