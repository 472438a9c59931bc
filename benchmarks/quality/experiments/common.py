"""Shared helpers of the quality experiments: data, row selection, metrics, result records.

Imports wealy_cli read-only (store, data splits, metrics). Paths default to runs/quality
and can be moved with WEALY_QUALITY_ROOT.

Row layout of a decoder store item (checked against wealy_cli/whisper/extract.py and transcribe.py):
the rows of each 30 s window in time order; a window's rows are one per token *fed* to the
decoder: ``prompt_tokens`` prompt rows (<|startofprev|>, previous text, <|startoftranscript|>,
and language/task tokens on multilingual models) then one per generated token (timestamps
included; the final end-of-text is never fed). ``tokens`` holds exactly those ids, so
``len(tokens) == rows``. Ids >= the tokenizer's end-of-text id (50256 for English-only models,
50257 for multilingual ones) are special or timestamp tokens.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wealy_cli.core.datasets import load_split
from wealy_cli.core.store import Store
from wealy_cli.ranking.metrics import retrieval_metrics

ROOT = Path(os.environ.get("WEALY_QUALITY_ROOT", "runs/quality"))
COLLECTION = ROOT / "collection" / "collection.csv"
WHISPER_STORE = ROOT / "stores" / "whisper"
RESULTS = ROOT / "results"
EOT = 50256  # tiny.en; multilingual models: 50257


@dataclass
class Song:
    key: str
    clique: str
    rows: np.ndarray  # (n, d) float32, all rows
    tokens: np.ndarray  # (n,) int64 token id fed at each row
    prompt: np.ndarray  # (n,) bool: row of a window's prompt
    window: np.ndarray  # (n,) int window index of each row
    text: str = ""

    @property
    def text_mask(self) -> np.ndarray:
        """Rows of generated text tokens (not prompt, not special/timestamp)."""
        return ~self.prompt & (self.tokens < EOT)

    def select(self, which: str) -> np.ndarray:
        return self.rows[self.mask(which)]

    def mask(self, which: str) -> np.ndarray:
        if which == "all":
            return np.ones(len(self.rows), bool)
        if which == "generated":  # prompt dropped, timestamps kept
            return ~self.prompt
        if which == "text":
            return self.text_mask
        raise ValueError(which)


@dataclass
class Split:
    name: str
    songs: list[Song]
    cliques: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cliques = [s.clique for s in self.songs]
        self.keys = [s.key for s in self.songs]


def read_song(store: Store, key: str) -> Song:
    attrs = store.attrs(key)
    rows = store[key].astype(np.float32)
    tokens, prompt, window = [], [], []
    for w_i, w in enumerate(attrs["windows"]):
        if len(w["tokens"]) != w["rows"]:
            raise ValueError(f"{key}: window {w_i} has {w['rows']} rows but {len(w['tokens'])} tokens")
        tokens.extend(w["tokens"])
        prompt.extend([True] * w["prompt_tokens"] + [False] * (w["rows"] - w["prompt_tokens"]))
        window.extend([w_i] * w["rows"])
    if len(tokens) != len(rows):
        raise ValueError(f"{key}: {len(rows)} rows but {len(tokens)} tokens")
    return Song(key, attrs["clique"], rows, np.asarray(tokens, np.int64), np.asarray(prompt, bool),
                np.asarray(window, np.int64), attrs.get("text", ""))


_CACHE: dict[tuple[str, str], Split] = {}


def load(split: str, store_dir: Path = WHISPER_STORE, metadata: Path = COLLECTION) -> Split:
    """The split's versions that are in the store (after wealy's split rules)."""
    cache_key = (split, str(store_dir))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    store = Store(store_dir)
    part = load_split("csv", split, metadata, check_audio=False)
    present = set(store.keys())
    songs = [read_song(store, v.key) for v in part.versions if v.key in present]
    # a clique reduced to one stored version has no relevant item: drop it, as wealy does
    sizes: dict[str, int] = {}
    for s in songs:
        sizes[s.clique] = sizes.get(s.clique, 0) + 1
    result = Split(split, [s for s in songs if sizes[s.clique] >= 2])
    _CACHE[cache_key] = result
    return result


# ---------------------------------------------------------------- metrics


@dataclass
class Score:
    map: float
    map_ci: float
    mr1: float
    mr1_ci: float
    arp: float
    arp_ci: float
    n: int
    ap: np.ndarray

    def short(self) -> str:
        return f"MAP {self.map:.3f} ± {self.map_ci:.3f}  MR1 {self.mr1:.2f}  ARP {self.arp:.2f}"

    def to_dict(self) -> dict:
        return {k: (round(float(v), 5) if k != "n" else int(v)) for k, v in self.__dict__.items() if k != "ap"}


def ci95(x: np.ndarray) -> float:
    """1.96 · std (ddof = 1) / √n, as the reference test.py."""
    x = np.asarray(x, np.float64)
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def score(distances: np.ndarray, split: Split) -> Score:
    """All-against-all metrics with ties at their expected value (DESIGN §6) and 95 % intervals
    over queries using the unbiased std."""
    ap, first, rp = expected_per_query(np.asarray(distances, np.float64), split.cliques)
    return Score(float(ap.mean()), ci95(ap), float(first.mean()), ci95(first), float(rp.mean()), ci95(rp), len(ap), ap)


def score_pessimistic(distances: np.ndarray, split: Split) -> Score:
    """wealy_cli.metrics (ties broken pessimistically; ARP over N − R − 1 non-relevant items)."""
    m = retrieval_metrics(np.asarray(distances, np.float64), split.cliques, split.cliques, split.keys, split.keys)
    return Score(m.map, ci95(m.ap), m.mr1, ci95(m.first_rank), m.arp, ci95(m.rp), m.n_queries, m.ap)


def expected_per_query(d: np.ndarray, cliques: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP, first relevant rank and rank percentile (%) as expected values over random
    orders of tied candidates (McSherry & Najork 2008; DESIGN §6). The query itself stays in
    the list at +inf as a non-relevant item (ARP denominator N − R, as sony/clews eval.py)."""
    cl = np.asarray(cliques)
    n_items = len(cl)
    aps, firsts, rps = [], [], []
    for q in range(n_items):
        row = np.where(np.isnan(d[q]), np.inf, d[q]).astype(np.float64)
        row[q] = np.inf
        rel = cl == cl[q]
        rel[q] = False
        R = int(rel.sum())
        if R == 0:
            continue
        M = n_items - R
        # the query's own entry is +inf and ranked after any other +inf (it is last by rule)
        order = np.lexsort((np.arange(n_items) == q, row))
        vals, rels = row[order], rel[order]
        c = t = 0
        ap_sum, first, rp_sum = 0.0, None, 0.0
        i = 0
        while i < n_items:
            j = i
            while j + 1 < n_items and vals[j + 1] == vals[i] and not (order[j + 1] == q):
                j += 1
            if order[i] == q:
                j = i
            n = j - i + 1
            r = int(rels[i:j + 1].sum())
            if r:
                for k in range(1, n + 1):
                    extra = (k - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
                    ap_sum += (r / n) * (t + 1 + extra) / (c + k)
                if first is None:
                    first = c + (n + 1) / (r + 1)
                rp_sum += r * ((c - t) + (n - r) / 2)
            c += n
            t += r
            i = j + 1
        aps.append(ap_sum / R)
        firsts.append(first)
        rps.append(100.0 * rp_sum / R / M)
    return np.array(aps), np.array(firsts, dtype=np.float64), np.array(rps)


def tied_relevant_fraction(distances: np.ndarray, split: Split) -> float:
    """Share of (query, relevant candidate) pairs whose distance equals some non-relevant one's
    (where the pessimistic tie rule could matter)."""
    d = np.asarray(distances)
    cl = np.asarray(split.cliques)
    tied = total = 0
    for i in range(len(cl)):
        rel = (cl == cl[i]) & (np.arange(len(cl)) != i)
        non = cl != cl[i]
        vals = set(d[i, non].tolist())
        for v in d[i, rel]:
            total += 1
            tied += v in vals
    return tied / max(total, 1)


# ---------------------------------------------------------------- result records


def record(experiment: str, method: str, results: dict[str, Score], **extra) -> dict:
    """Append one result line to RESULTS/<experiment>.jsonl and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    row = {"experiment": experiment, "method": method, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           **{split: s.to_dict() for split, s in results.items()}, **extra}
    with open(RESULTS / f"{experiment}.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    parts = "  |  ".join(f"{split}: {s.short()}" for split, s in results.items())
    print(f"[{experiment}] {method}: {parts}", flush=True)
    return row


def save_matrix(name: str, split: Split, distances: np.ndarray) -> Path:
    """Keep a distance matrix for fusion (RESULTS/matrices/<name>-<split>.npz)."""
    out = RESULTS / "matrices"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{split.name}.npz"
    np.savez_compressed(path, distances=np.asarray(distances, np.float32), keys=np.asarray(split.keys))
    return path


def load_matrix(name: str, split: Split) -> np.ndarray:
    data = np.load(RESULTS / "matrices" / f"{name}-{split.name}.npz")
    keys = list(data["keys"])
    if keys != split.keys:
        pos = {k: i for i, k in enumerate(keys)}
        idx = np.array([pos[k] for k in split.keys])
        return data["distances"][np.ix_(idx, idx)]
    return data["distances"]
