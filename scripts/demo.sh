#!/usr/bin/env bash
# `make demo`: a small real job on bundled data, fully offline.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${WEALY_DEMO_DIR:-runs/demo}
mkdir -p "$OUT"
# A tiny store keyed like the real SHS100K test split (features are random until extraction runs).
$BIN/python - "$OUT/store" <<'PY'
import sys
from pathlib import Path
import numpy as np
from wealy_cli.data import load_split
from wealy_cli.store import StoreWriter

split = load_split("shs", "test", check_audio=False)
rng = np.random.default_rng(0)
with StoreWriter(Path(sys.argv[1]), 384, settings={"demo": "random features"}, shard_items=8) as w:
    for v in split.versions[:40]:
        if v.key not in w:
            w.add(v.key, rng.standard_normal((int(rng.integers(50, 200)), 384)), clique=v.clique, version=v.version)
print(f"store with {len(split.versions[:40])} SHS100K test keys in {sys.argv[1]}")
PY
$BIN/wealy store info "$OUT/store"
$BIN/wealy store verify "$OUT/store"
