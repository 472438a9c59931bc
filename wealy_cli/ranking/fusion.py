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
4. **Evaluate** each combination (``metrics.RankAccumulator``, with the tie rule ``ties``); the
   best row has the highest MAP (ties: lower ARP, then the earlier row).

Inputs are read by row blocks (:func:`fuse_paths`; .h5 files are never loaded whole): each block
of aligned rows is read once and ranked for the whole weight grid, so memory is bounded by the
block size. ``zscore`` first needs one pass for each input's mean and standard deviation;
``rank`` needs whole matrices and is refused when they do not fit in memory.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import write_atomically
from wealy_cli.ranking.matrixfile import DistanceMatrix, MatrixWriter, open_rows, write_matrix
from wealy_cli.ranking.options import FuseRun

Normalization = Literal["none", "zscore", "rank"]
BLOCK_BYTES = 2**26  # float64 distances per row block of one input (64 MB)
MAX_COMBINATIONS = 10_000


# ---------------------------------------------------------------- alignment


class RowSource(Protocol):
    """A distance matrix whose rows can be read by index (``DistanceMatrix`` via
    :class:`InMemoryRows`, or an open file: ``matrixfile.MatrixRows``)."""

    query_keys: list[str]
    candidate_keys: list[str]
    query_cliques: list[str]
    candidate_cliques: list[str]
    shape: tuple[int, int]

    def rows(self, index: np.ndarray) -> np.ndarray: ...


class InMemoryRows:
    """A ``DistanceMatrix`` seen as a :class:`RowSource`."""

    def __init__(self, m: DistanceMatrix) -> None:
        self.matrix = m
        self.query_keys, self.candidate_keys = m.query_keys, m.candidate_keys
        self.query_cliques, self.candidate_cliques = m.query_cliques, m.candidate_cliques
        self.shape = m.shape

    def rows(self, index: np.ndarray) -> np.ndarray:
        return self.matrix.distances[np.asarray(index, dtype=np.int64)]


@dataclass
class Plan:
    """Where the shared versions are in every input: aligned row i of input k is its row
    ``rows[k][i]``, aligned column j its column ``cols[k][j]``."""

    names: list[str]
    sources: list[Any]
    query_keys: list[str]
    candidate_keys: list[str]
    query_cliques: list[str]
    candidate_cliques: list[str]
    rows: list[np.ndarray]
    cols: list[np.ndarray]
    report: list[dict] = field(default_factory=list)  # per input: shape, kept, lost

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.query_keys), len(self.candidate_keys)

    def read(self, k: int, start: int, stop: int) -> np.ndarray:
        """Aligned rows start..stop of input k (float64, NaN → +inf)."""
        block = self.sources[k].rows(self.rows[k][start:stop])
        cols = self.cols[k]
        if len(cols) != block.shape[1] or (np.diff(cols) != 1).any():  # not already in aligned order
            block = block[:, cols]
        block = block.astype(np.float64)
        nan = np.isnan(block)
        if nan.any():
            block[nan] = np.inf
        return block

    def own_columns(self, start: int, stop: int) -> np.ndarray:
        """For aligned rows start..stop, the aligned column of the query itself (−1: absent)."""
        column = {key: j for j, key in enumerate(self.candidate_keys)}
        return np.array([column.get(k, -1) for k in self.query_keys[start:stop]], dtype=np.int64)


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


def plan_alignment(sources: Sequence[Any], names: Sequence[str]) -> Plan:
    """Intersect the inputs on query and candidate keys (see module docstring), keys only."""
    shared_q = set.intersection(*(set(m.query_keys) for m in sources))
    shared_c = set.intersection(*(set(m.candidate_keys) for m in sources))
    q_keys = [k for k in sources[0].query_keys if k in shared_q]
    c_keys = [k for k in sources[0].candidate_keys if k in shared_c]
    if not q_keys or not c_keys:
        sizes = ", ".join(f"{n}: {m.shape[0]}×{m.shape[1]}" for n, m in zip(names, sources))
        raise UserError(f"the inputs share no {'query' if not q_keys else 'candidate'} versions "
                        f"({sizes}); are they from the same dataset split and key format?")
    q_cliques = _shared_cliques(sources, names, q_keys, "query")
    c_cliques = _shared_cliques(sources, names, c_keys, "candidate")
    rows, cols, report = [], [], []
    for name, m in zip(names, sources):
        rows.append(_positions(m.query_keys, q_keys))
        cols.append(_positions(m.candidate_keys, c_keys))
        report.append({"input": name, "shape": f"{m.shape[0]}×{m.shape[1]}",
                       "queries kept": len(q_keys), "queries lost": m.shape[0] - len(q_keys),
                       "candidates kept": len(c_keys), "candidates lost": m.shape[1] - len(c_keys)})
    return Plan(list(names), list(sources), q_keys, c_keys, q_cliques, c_cliques, rows, cols, report)


def align(matrices: Sequence[DistanceMatrix], names: Sequence[str]) -> Alignment:
    """Intersect in-memory inputs on query and candidate keys (see module docstring)."""
    plan = plan_alignment(matrices, names)
    distances = [m.distances[np.ix_(r, c)] for m, r, c in zip(matrices, plan.rows, plan.cols)]
    return Alignment(plan.names, distances, plan.query_keys, plan.candidate_keys, plan.query_cliques,
                     plan.candidate_cliques, plan.report)


def _positions(keys: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    return np.array([index[k] for k in wanted], dtype=np.int64)


def _shared_cliques(matrices: Sequence[Any], names: Sequence[str], keys: list[str], side: str) -> list[str]:
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


def _clique_map(m: Any, side: str) -> dict[str, str]:
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


def fuse_grid(aligned: Alignment, alphas: Sequence[float], method: Normalization = "none",
              ties: str = "expected") -> list[FusionRow]:
    """Metrics of every weight combination of in-memory aligned inputs (see module docstring)."""
    n_q, n_c = len(aligned.query_keys), len(aligned.candidate_keys)
    sources = [InMemoryRows(DistanceMatrix(d, aligned.query_keys, aligned.candidate_keys, aligned.query_cliques,
                                           aligned.candidate_cliques)) for d in aligned.distances]
    identity_rows, identity_cols = np.arange(n_q), np.arange(n_c)
    plan = Plan(aligned.names, sources, aligned.query_keys, aligned.candidate_keys, aligned.query_cliques,
                aligned.candidate_cliques, [identity_rows] * len(sources), [identity_cols] * len(sources),
                aligned.report)
    return fuse_rows(plan, alphas, method, ties)


def fuse_paths(paths: Sequence[Path], names: Sequence[str], alphas: Sequence[float], method: Normalization = "none",
               ties: str = "expected", block_bytes: int = BLOCK_BYTES,
               save_best: Path | None = None, metadata: dict | None = None) -> tuple[Plan, list[FusionRow]]:
    """Align distance-matrix files on keys and evaluate every weight combination, reading the
    inputs by row blocks (.h5 files are never loaded whole); ``save_best`` writes the fused
    matrix of the best weights (.h5 by row blocks, else in memory)."""
    sources: list[Any] = []
    try:
        for path in paths:
            sources.append(open_rows(path))
        plan = plan_alignment(sources, names)
        rows = fuse_rows(plan, alphas, method, ties, block_bytes)
        if save_best is not None:
            weights = rows[best_row(rows)].weights
            meta = {**(metadata or {}), "weights": list(weights)}
            if Path(save_best).suffix.lower() in (".h5", ".hdf5"):
                write_fused(save_best, plan, weights, method, meta, block_bytes)
            else:
                fused = np.vstack([b for _, b in fused_blocks(plan, weights, method, block_bytes)])
                write_matrix(save_best, DistanceMatrix(fused, plan.query_keys, plan.candidate_keys,
                                                       plan.query_cliques, plan.candidate_cliques, meta))
        return plan, rows
    finally:
        for source in sources:
            source.close()


def fuse_rows(plan: Plan, alphas: Sequence[float], method: Normalization = "none", ties: str = "expected",
              block_bytes: int = BLOCK_BYTES) -> list[FusionRow]:
    """One pass over the aligned rows: each row block of every input is read once, normalised,
    and ranked for every weight combination of the grid."""
    from wealy_cli.ranking.metrics import RankAccumulator, check_ties  # torch: imported when needed

    check_ties(ties)
    grid = weight_grid(alphas, len(plan.sources))
    scale = Scaling.fit(plan, method, block_bytes)
    accumulators = [RankAccumulator(plan.query_cliques, plan.candidate_cliques, plan.query_keys,
                                    plan.candidate_keys, ties=ties) for _ in grid]
    with ui.progress() as bar:
        task = bar.add_task("fusion", total=plan.shape[0], status=f"{len(grid)} weight combinations")
        for start, mats in scale.blocks(plan, block_bytes):
            rows = np.arange(start, start + len(mats[0]))
            columns = candidates_that_matter(mats, grid, accumulators[0], rows)
            parts = [[m[i, cols] for m in mats] for i, cols in enumerate(columns)]
            for acc, weights in zip(accumulators, grid):
                acc.add_known_rows(rows, [combine(p, weights) for p in parts], columns)
            bar.advance(task, len(rows))
    return [FusionRow(tuple(w), acc.result().to_dict()) for w, acc in zip(grid, accumulators)]


def candidates_that_matter(mats: Sequence[np.ndarray], grid: Sequence[Sequence[float]], acc: Any,
                           rows: np.ndarray) -> list[np.ndarray]:
    """For each row, the columns that can rank at or above one of its relevant candidates for
    some weight of the grid (plus the relevant candidates and the query's own entry).

    A fused distance is linear in the weights and the largest relevant one is a maximum of
    linear functions (convex), so their difference is concave over the box of weights: above
    the largest relevant distance at every corner of the box means above it everywhere in the
    box. A margin of 1e-9 (relative) keeps candidates whose order could turn on rounding; the
    others count for no threshold at any weight and are left out of the ranking."""
    corners = list(itertools.product(*[(min(ws), max(ws)) for ws in zip(*grid)]))
    keep = np.zeros(mats[0].shape, dtype=bool)
    relevant = []
    for q in rows:
        own = int(acc.self_index[q])
        rel = acc.relevant[q] if own < 0 else acc.relevant[q][acc.relevant[q] != own]
        relevant.append((rel, own))
    for corner in corners:
        fused = combine(mats, corner)
        top = np.full(len(rows), np.inf)
        for i, (rel, _) in enumerate(relevant):
            if len(rel):
                top[i] = fused[i, rel].max()
        with np.errstate(invalid="ignore"):
            keep |= fused <= (top + 1e-9 * (1.0 + np.abs(top)))[:, None]
    columns = []
    for i, (rel, own) in enumerate(relevant):
        keep[i, rel] = True
        if own >= 0:
            keep[i, own] = True
        columns.append(np.flatnonzero(keep[i]))
    return columns


def fused_blocks(plan: Plan, weights: Sequence[float], method: Normalization = "none",
                 block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks of the fused matrix for ``weights`` (float64)."""
    scale = Scaling.fit(plan, method, block_bytes)
    for start, mats in scale.blocks(plan, block_bytes):
        yield start, combine(mats, weights)


def write_fused(path: Path, plan: Plan, weights: Sequence[float], method: Normalization = "none",
                metadata: dict | None = None, block_bytes: int = BLOCK_BYTES) -> Path:
    """The fused matrix for ``weights`` as an .h5 written by row blocks (float32)."""
    with MatrixWriter(path, plan.query_keys, plan.candidate_keys, plan.query_cliques, plan.candidate_cliques,
                      metadata) as writer:
        for start, block in fused_blocks(plan, weights, method, block_bytes):
            writer.write(start, block.astype(np.float32))
    return Path(path)


@dataclass
class Scaling:
    """Per-input normalisation applied to each row block: (x − shift) / scale on finite entries,
    or, for ``rank``, the whole normalised matrices held in memory."""

    method: str
    shift: list[float]
    scale: list[float]
    whole: list[np.ndarray] | None = None

    @classmethod
    def fit(cls, plan: Plan, method: Normalization, block_bytes: int = BLOCK_BYTES) -> Scaling:
        k = len(plan.sources)
        if method == "none":
            return cls(method, [0.0] * k, [1.0] * k)
        if method == "zscore":
            stats = [_finite_mean_std(plan, i, block_bytes) for i in range(k)]
            return cls(method, [m for m, _ in stats], [sd if sd > 0 else 1.0 for _, sd in stats])
        if method == "rank":
            return cls(method, [0.0] * k, [1.0] * k, _whole_ranked(plan, block_bytes))
        raise UserError(f"--normalize {method!r}: choose none, zscore or rank")

    def blocks(self, plan: Plan, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(first aligned row, [normalised float64 row block of each input])."""
        for start, stop in _row_blocks(plan, block_bytes):
            if self.whole is not None:
                yield start, [m[start:stop] for m in self.whole]
                continue
            mats = []
            for k in range(len(plan.sources)):
                block = plan.read(k, start, stop)
                if self.method != "none":
                    block = np.where(np.isfinite(block), (block - self.shift[k]) / self.scale[k], np.inf)
                mats.append(block)
            yield start, mats


def _row_blocks(plan: Plan, block_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, block_bytes // (8 * max(1, plan.shape[1])))
    for start in range(0, plan.shape[0], step):
        yield start, min(start + step, plan.shape[0])


def _finite_mean_std(plan: Plan, k: int, block_bytes: int) -> tuple[float, float]:
    """Mean and (population) standard deviation of input k's finite aligned entries other than
    the queries' own, by row blocks (Chan et al.'s pairwise update of count, mean and M2)."""
    count, mean, m2 = 0, 0.0, 0.0
    for start, stop in _row_blocks(plan, block_bytes):
        block = plan.read(k, start, stop)
        keep = np.isfinite(block)
        own = plan.own_columns(start, stop)
        has = np.flatnonzero(own >= 0)
        keep[has, own[has]] = False
        values = block[keep]
        if not len(values):
            continue
        b_mean = float(values.mean())
        b_m2 = float(((values - b_mean) ** 2).sum())
        total = count + len(values)
        delta = b_mean - mean
        mean += delta * len(values) / total
        m2 += b_m2 + delta * delta * count * len(values) / total
        count = total
    return (mean, math.sqrt(m2 / count)) if count else (0.0, 1.0)


def _whole_ranked(plan: Plan, block_bytes: int) -> list[np.ndarray]:
    """``rank`` needs every entry's rank in its whole matrix: the aligned matrices in memory."""
    from wealy_cli.ranking.tiles import available_memory

    n_q, n_c = plan.shape
    need = 8 * n_q * n_c * (len(plan.sources) + 1)
    if need > available_memory() // 2:
        raise UserError(f"--normalize rank needs the {len(plan.sources)} aligned {n_q}×{n_c} matrices in memory "
                        f"({need / 2**30:.1f} GiB, more than half the available memory); use zscore or none")
    whole = []
    for k in range(len(plan.sources)):
        m = np.vstack([plan.read(k, a, b) for a, b in _row_blocks(plan, block_bytes)])
        own = np.zeros(m.shape, dtype=bool)
        rows = np.arange(n_q)
        cols = plan.own_columns(0, n_q)
        own[rows[cols >= 0], cols[cols >= 0]] = True
        whole.append(normalize(m, "rank", own))
    return whole


def best_row(rows: Sequence[FusionRow]) -> int:
    """Index of the highest MAP (ties: lower ARP, then the earlier row)."""
    return min(range(len(rows)), key=lambda i: (-rows[i].metrics["map"], rows[i].metrics["arp"], i))


# ---------------------------------------------------------------- outputs


def write_csv(path: Path, rows: Sequence[FusionRow], names: Sequence[str]) -> Path:
    weight_cols = [f"weight_{n}" for n in names[1:]]
    metric_cols = ["map", "map_ci", "mr1", "mr1_ci", "arp", "arp_ci", "n_queries", "ties"]
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
    aligned: Plan
    rows: list[FusionRow]
    best: int
    output: Path


def input_names(paths: Sequence[Path]) -> list[str]:
    """Short, unique labels for the inputs: file stems (numbered when they repeat)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]


def fuse_files(run: FuseRun) -> FuseReport:
    """``wealy fuse``: align the inputs (read by row blocks), score every weight combination, and
    write fusion_results.csv, fusion_map.png, fusion_summary.json (and the fused matrix of the best
    weights: fused_best.h5 when an input is .h5, else fused_best.npz) to the output."""
    names = input_names(run.inputs)
    out = run.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    any_h5 = any(Path(p).suffix.lower() in (".h5", ".hdf5") for p in run.inputs)
    save = out / ("fused_best.h5" if any_h5 else "fused_best.npz") if run.save_fused else None
    plan, rows = fuse_paths(run.inputs, names, run.alphas, run.normalize, run.ties, save_best=save,
                            metadata={"inputs": [str(p) for p in run.inputs], "normalize": run.normalize})
    best = best_row(rows)
    write_csv(out / "fusion_results.csv", rows, names)
    plot_map(out / "fusion_map.png", rows, names)
    summary = {"inputs": [str(p) for p in run.inputs], "normalize": run.normalize, "ties": run.ties,
               "alignment": plan.report, "best": {"weights": dict(zip(names[1:], rows[best].weights)),
                                                  **rows[best].metrics}}
    write_atomically(out / "fusion_summary.json", json.dumps(summary, indent=2))
    return FuseReport(names, plan, rows, best, out)
