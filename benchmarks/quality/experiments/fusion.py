"""(e) Late fusion of a WEALY distance with a transcription baseline: d = n(d_wealy) + α · n(d_text).

n is a normalisation of each whole matrix (wealy_cli.fusion.normalize, the query's own entry
left out of the statistics): none, zscore or rank. α is chosen on validation (grid 0…4 step
0.1), per normalisation and overall; test is reported at the validation choice only.

    python fusion.py li-rows-text_centre-train_sym-mean bm25
"""

from __future__ import annotations

import sys

import numpy as np
from common import load, load_matrix, record, score

from wealy_cli.ranking.fusion import normalize

ALPHAS = [round(0.1 * i, 2) for i in range(41)]


def fused(a: np.ndarray, b: np.ndarray, alpha: float, method: str) -> np.ndarray:
    own = np.eye(len(a), dtype=bool)
    return normalize(a, method, own) + alpha * normalize(b, method, own)


def run(wealy: str, text: str, methods=("none", "zscore", "rank")) -> dict:
    val, test = load("val"), load("test")
    a_val, b_val = load_matrix(wealy, val), load_matrix(text, val)
    a_test, b_test = load_matrix(wealy, test), load_matrix(text, test)
    best_overall = None
    for method in methods:
        grid = [(score(fused(a_val, b_val, al, method), val).map, al) for al in ALPHAS]
        best_map, alpha = max(grid, key=lambda t: (t[0], -t[1]))
        results = {"val": score(fused(a_val, b_val, alpha, method), val),
                   "test": score(fused(a_test, b_test, alpha, method), test)}
        row = record("fusion", f"{wealy} + α·{text} [{method}]", results, alpha=alpha, normalisation=method,
                     val_grid=[(round(m, 4), al) for m, al in grid])
        if best_overall is None or best_map > best_overall[0]:
            best_overall = (best_map, method, alpha, row)
    print(f"chosen on val: {best_overall[1]} α={best_overall[2]}: test MAP {best_overall[3]['test']['map']:.4f}")
    return best_overall[3]


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
