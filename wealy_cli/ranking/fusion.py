"""Late fusion of distance matrices from several modalities (e.g. CLEWS audio + WEALY lyrics).

1. **Align** every input on version keys: the queries (and candidates) kept are those present in
   every input, in the first input's order. Each input reports how many it lost. The clique of a
   kept version must be the same in every input.
2. **Normalise** each aligned matrix (``none``, ``zscore``: minus the mean, over the standard
   deviation of its finite entries other than a query's own entry; ``rank``: every entry replaced
   by its rank among all finite entries of that matrix, scaled to [0, 1], ties averaged).
   Non-finite entries (NaN counts as +inf) stay +inf.
3. **Combine** ``m1 + w2·m2 + … + wk·mk`` for every weight combination of the grid: the same
   list of weights for each extra input, all combinations (``len(alphas) ** (k − 1)`` rows; at
   most ``MAX_COMBINATIONS``). A zero weight drops that input (so an +inf there cannot turn
   into NaN), so weight 0 reproduces m1 exactly.
4. **Evaluate** each combination with ``metrics.retrieval_metrics``; the best row has the highest
   MAP (ties: lower ARP, then the earlier row).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically
from wealy_cli.ranking.matrixfile import DistanceMatrix, read_matrix, write_matrix
from wealy_cli.ranking.options import FuseRun

Normalization = Literal["none", "zscore", "rank"]
MAX_COMBINATIONS = 10_000


# ---------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """Inputs restricted to the shared versions, in the same row and column order."""

    names: list[str]
    distances: list[np.ndarray]
    query_keys: list[str]
    candidate_keys: list[str]
    query_cliques: list[str]
    candidate_cliques: list[str]
    report: list[dict] = field(default_factory=list)  # per input: shape, kept, lost


def align(matrices: Sequence[DistanceMatrix], names: Sequence[str]) -> Alignment:
    """Intersect the inputs on query and candidate keys (see module docstring)."""
    shared_q = set.intersection(*(set(m.query_keys) for m in matrices))
    shared_c = set.intersection(*(set(m.candidate_keys) for m in matrices))
    q_keys = [k for k in matrices[0].query_keys if k in shared_q]
    c_keys = [k for k in matrices[0].candidate_keys if k in shared_c]
    if not q_keys or not c_keys:
        sizes = ", ".join(f"{n}: {m.shape[0]}×{m.shape[1]}" for n, m in zip(names, matrices))
        raise UserError(f"the inputs share no {'query' if not q_keys else 'candidate'} versions "
                        f"({sizes}); are they from the same dataset split and key format?")
    q_cliques = _shared_cliques(matrices, names, q_keys, "query")
    c_cliques = _shared_cliques(matrices, names, c_keys, "candidate")
    distances, report = [], []
    for name, m in zip(names, matrices):
        rows = _positions(m.query_keys, q_keys)
        cols = _positions(m.candidate_keys, c_keys)
        distances.append(m.distances[np.ix_(rows, cols)])
        report.append({"input": name, "shape": f"{m.shape[0]}×{m.shape[1]}",
                       "queries kept": len(q_keys), "queries lost": m.shape[0] - len(q_keys),
                       "candidates kept": len(c_keys), "candidates lost": m.shape[1] - len(c_keys)})
    return Alignment(list(names), distances, q_keys, c_keys, q_cliques, c_cliques, report)


def _positions(keys: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    return np.array([index[k] for k in wanted], dtype=np.int64)


def _shared_cliques(matrices: Sequence[DistanceMatrix], names: Sequence[str], keys: list[str],
                    side: str) -> list[str]:
    first = _clique_map(matrices[0], side)
    cliques = [first[k] for k in keys]
    for name, m in zip(names[1:], matrices[1:]):
        other = _clique_map(m, side)
        bad = [k for k, c in zip(keys, cliques) if other[k] != c]
        if bad:
            k = bad[0]
            raise UserError(f"{names[0]} and {name} disagree on the clique of {len(bad)} shared "
                            f"{side} version(s), e.g. {k}: {first[k]!r} vs {other[k]!r}")
    return cliques


def _clique_map(m: DistanceMatrix, side: str) -> dict[str, str]:
    if side == "query":
        return dict(zip(m.query_keys, m.query_cliques))
    return dict(zip(m.candidate_keys, m.candidate_cliques))


# ---------------------------------------------------------------- normalisation


def normalize(d: np.ndarray, method: Normalization, exclude: np.ndarray | None = None) -> np.ndarray:
    """``d`` normalised by ``method``; ``exclude`` (bool, same shape) marks entries, such as a
    query's own entry, left out of the statistics."""
    return apply_normalization(d, method, normalization_stats(d, method, exclude))


def normalization_stats(d: np.ndarray, method: Normalization, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """What ``method`` needs to know of a matrix: mean and standard deviation of its finite
    entries (``exclude`` left out) for zscore, its sorted finite entries for rank. Catalogue search
    keeps these for the index's matrix and normalises each query's distances with them."""
    d = np.where(np.isnan(d), np.inf, np.asarray(d, dtype=np.float64))
    finite = np.isfinite(d)
    if method == "none":
        return {}
    if method == "zscore":
        values = d[finite & ~exclude] if exclude is not None else d[finite]
        return {"count": int(values.size), "mean": float(values.mean()) if values.size else 0.0,
                "std": float(values.std()) if values.size else 0.0}
    if method == "rank":
        return {"sorted": np.sort(d[finite])}
    raise UserError(f"--normalize {method!r}: choose none, zscore or rank")


def apply_normalization(d: np.ndarray, method: Normalization, stats: dict[str, Any]) -> np.ndarray:
    """``d`` normalised with ``normalization_stats`` (of ``d`` itself, or of a reference matrix).
    Non-finite entries (NaN counts as +inf) stay +inf."""
    d = np.where(np.isnan(d), np.inf, np.asarray(d, dtype=np.float64))
    if method == "none":
        return d
    finite = np.isfinite(d)
    if method == "zscore":
        if stats["count"] == 0:
            return d
        std = stats["std"]
        out = (d - stats["mean"]) / (std if std > 0 else 1.0)
        return np.where(finite, out, np.inf)
    if method == "rank":  # the average rank among the reference values (ties averaged), scaled to [0, 1]
        ref = stats["sorted"]
        out = np.full(d.shape, np.inf)
        left = np.searchsorted(ref, d[finite], side="left")
        right = np.searchsorted(ref, d[finite], side="right")
        out[finite] = (left + right - 1) / 2 / max(len(ref) - 1, 1)
        return out
    raise UserError(f"--normalize {method!r}: choose none, zscore or rank")


# ---------------------------------------------------------------- grid search


@dataclass
class FusionRow:
    weights: tuple[float, ...]  # one per extra input (inputs 2..k)
    metrics: dict


def own_entries(query_keys: Sequence[str], candidate_keys: Sequence[str]) -> np.ndarray:
    """Boolean mask of the entries where a query meets itself."""
    mask = np.zeros((len(query_keys), len(candidate_keys)), dtype=bool)
    column = {k: j for j, k in enumerate(candidate_keys)}
    for i, key in enumerate(query_keys):
        if key in column:
            mask[i, column[key]] = True
    return mask


def weight_grid(alphas: Sequence[float], n_inputs: int) -> list[tuple[float, ...]]:
    combos = len(alphas) ** (n_inputs - 1)
    if combos > MAX_COMBINATIONS:
        raise UserError(f"--alphas: {len(alphas)} values for {n_inputs - 1} extra inputs make {combos} "
                        f"combinations (at most {MAX_COMBINATIONS}); use fewer values")
    return list(itertools.product(alphas, repeat=n_inputs - 1))


def combine(distances: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """m1 + Σ w_i · m_i, skipping zero weights."""
    out = np.array(distances[0], dtype=np.float64, copy=True)
    for w, d in zip(weights, distances[1:]):
        if w != 0:
            out += w * d
    return out


def fuse_grid(aligned: Alignment, alphas: Sequence[float], method: Normalization = "none") -> list[FusionRow]:
    """Metrics of every weight combination (see module docstring)."""
    from wealy_cli.ranking.metrics import retrieval_metrics  # torch: imported when needed

    own = own_entries(aligned.query_keys, aligned.candidate_keys)
    normed = [normalize(d, method, own) for d in aligned.distances]
    grid = weight_grid(alphas, len(normed))
    rows = []
    with ui.progress() as bar:
        task = bar.add_task("fusion", total=len(grid), status="")
        for weights in grid:
            bar.update(task, status=", ".join(f"{w:g}" for w in weights))
            m = retrieval_metrics(combine(normed, weights), aligned.query_cliques, aligned.candidate_cliques,
                                  aligned.query_keys, aligned.candidate_keys)
            rows.append(FusionRow(tuple(weights), m.to_dict()))
            bar.advance(task)
    return rows


def best_row(rows: Sequence[FusionRow]) -> int:
    """Index of the highest MAP (ties: lower ARP, then the earlier row)."""
    return min(range(len(rows)), key=lambda i: (-rows[i].metrics["map"], rows[i].metrics["arp"], i))


# ---------------------------------------------------------------- outputs


def write_csv(path: Path, rows: Sequence[FusionRow], names: Sequence[str]) -> Path:
    weight_cols = [f"weight_{n}" for n in names[1:]]
    metric_cols = ["map", "map_ci", "mr1", "mr1_ci", "arp", "arp_ci", "n_queries"]
    best = best_row(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(weight_cols + metric_cols + ["best"])
        for i, row in enumerate(rows):
            writer.writerow([f"{w:g}" for w in row.weights] + [row.metrics[c] for c in metric_cols]
                            + [int(i == best)])
    return path


def plot_map(path: Path, rows: Sequence[FusionRow], names: Sequence[str]) -> Path:
    """MAP against the weight of each extra input (for 3+ inputs: the best MAP over the other
    weights at each value, one line per input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, name in enumerate(names[1:]):
        values = sorted({r.weights[j] for r in rows})
        best_map = [max(r.metrics["map"] for r in rows if r.weights[j] == v) for v in values]
        ax.plot(values, best_map, marker="o", label=name)
    b = rows[best_row(rows)]
    ax.set_xlabel(f"weight (fused = {names[0]} + weight · other)")
    ax.set_ylabel("MAP")
    ax.set_title(f"best MAP {b.metrics['map']:.4f} at {', '.join(f'{w:g}' for w in b.weights)}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- a run over files


@dataclass
class FuseReport:
    names: list[str]
    aligned: Alignment
    rows: list[FusionRow]
    best: int
    output: Path


def input_names(paths: Sequence[Path]) -> list[str]:
    """Short, unique labels for the inputs: file stems (numbered when they repeat)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]


def fuse_files(run: FuseRun) -> FuseReport:
    """``wealy fuse``: read and align the inputs, score every weight combination, and write
    fusion_results.csv, fusion_map.png, fusion_summary.json (and fused_best.npz) to the output."""
    names = input_names(run.inputs)
    aligned = align([read_matrix(p) for p in run.inputs], names)
    rows = fuse_grid(aligned, run.alphas, run.normalize)
    best = best_row(rows)
    out = run.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "fusion_results.csv", rows, names)
    plot_map(out / "fusion_map.png", rows, names)
    summary = {"inputs": [str(p) for p in run.inputs], "normalize": run.normalize, "alignment": aligned.report,
               "best": {"weights": dict(zip(names[1:], rows[best].weights)), **rows[best].metrics}}
    write_atomically(out / "fusion_summary.json", json.dumps(summary, indent=2))
    if run.save_fused:
        own = own_entries(aligned.query_keys, aligned.candidate_keys)
        fused = combine([normalize(d, run.normalize, own) for d in aligned.distances], rows[best].weights)
        write_matrix(out / "fused_best.npz", DistanceMatrix(fused, aligned.query_keys, aligned.candidate_keys,
                                                            aligned.query_cliques, aligned.candidate_cliques,
                                                            summary))
    return FuseReport(names, aligned, rows, best, out)
