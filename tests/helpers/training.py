"""A separable synthetic training set and the training command line, shared by training tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from helpers.stores import make_store

TINY = ["--hidden-dim", "32", "--zdim", "16", "--layers", "1", "--heads", "4", "--ff-dim", "64"]
TINY_CFG = dict(hidden_dim=32, zdim=16, num_transformer_blocks=1, num_heads=4, ff_dim=64)


def build_separable(root: Path, train_cliques: int = 96, val_cliques: int = 12, versions: int = 2,
                    dim: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Cliques are separable by a signature in the first half of the dims; every version adds a
    large constant nuisance in the second half, so an untrained model ranks near chance and a
    model must learn to ignore the nuisance. Val cliques are new signatures."""
    rng = np.random.default_rng(seed)
    items, rows = {}, ["clique,version,path,split"]
    for split, n in (("train", train_cliques), ("val", val_cliques)):
        for c in range(n):
            signature = rng.normal(size=dim // 2)
            for v in range(versions):
                T = int(rng.integers(4, 24))
                x = np.zeros((T, dim), np.float32)
                x[:, : dim // 2] = signature + 0.3 * rng.normal(size=(T, dim // 2))
                x[:, dim // 2:] = 2.0 * rng.normal(size=dim // 2) + 0.3 * rng.normal(size=(T, dim // 2))
                items[f"{split}{c}/v{v}"] = x
                rows.append(f"{split}{c},v{v},x.mp3,{split}")
    make_store(root / "store", items, dim)
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "store", root / "data.csv"


def train_args(store_dir: Path, csv_path: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--store", store_dir, "--dataset", "csv", "--metadata", csv_path, "--output", out,
            *TINY, "--chunk", "16", "--loader-workers", "0", "--warmup-epochs", "1", "--lr", "3e-3",
            "--quiet", *extra]


def read_state_retrying(path: Path) -> dict:
    for _ in range(20):
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            time.sleep(0.05)  # replaced while reading
    return torch.load(path, weights_only=True)
