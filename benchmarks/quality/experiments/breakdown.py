"""Test MAP of saved distance matrices broken down by what the query version is: full song or
excerpt, SNR band, empty transcription. (Per-query AP from common.score, grouped.)

    python breakdown.py bm25 li-rows-text_centre-train_sym-mean_top-0.5 colbert-lin384-nocrop
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from common import COLLECTION, load, load_matrix, score


def main(names: list[str], split_name: str = "test") -> None:
    split = load(split_name)
    meta = {f"{r['clique']}/{r['version']}": r for r in csv.DictReader(open(COLLECTION))}
    groups: dict[str, np.ndarray] = {}
    kinds = [meta[k]["kind"] for k in split.keys]
    snr = np.array([float(meta[k]["snr_db"]) for k in split.keys])
    empty = np.array([not s.text.strip() for s in split.songs])
    groups["full"] = np.array([k.startswith("full") for k in kinds])
    groups["excerpt"] = ~groups["full"]
    groups["SNR < 3 dB"] = snr < 3
    groups["SNR 3–8 dB"] = (snr >= 3) & (snr < 8)
    groups["SNR ≥ 8 dB"] = snr >= 8
    groups["changed words"] = np.array(["changed" in k for k in kinds])
    groups["quotes another song"] = np.array(["quote" in k for k in kinds])
    groups["empty transcription"] = empty
    header = "| queries | n | " + " | ".join(names) + " |"
    print(header)
    print("|" + "---|" * (len(names) + 2))
    aps = {n: score(load_matrix(n, split), split).ap for n in names}
    for g, mask in groups.items():
        cells = [f"{aps[n][mask].mean():.3f}" if mask.any() else "–" for n in names]
        print(f"| {g} | {int(mask.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
