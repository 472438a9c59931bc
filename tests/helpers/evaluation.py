"""A small evaluation set-up shared by the evaluate and concurrency tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from helpers.stores import make_store

DIM = 8


def build_evaluation_setup(root: Path):
    """Under ``root``: a csv dataset of 30 versions in 10 cliques, features with 5..40 rows, a saved model."""
    from wealy_cli.model.network import ModelConfig, build_model, save_weights

    rng = np.random.default_rng(0)
    cliques = [f"s{i // 3}" for i in range(30)]
    centre = {c: rng.standard_normal(DIM) for c in sorted(set(cliques))}  # not set order: PYTHONHASHSEED
    items = {f"{c}/v{i}": (centre[c] + rng.standard_normal((int(rng.integers(5, 41)), DIM))).astype(np.float16)
             for i, c in enumerate(cliques)}
    make_store(root / "features", items, DIM)
    (root / "split.csv").write_text("clique,version,path\n" + "".join(f"{k.replace('/', ',')},x.mp3\n" for k in items))
    torch.manual_seed(0)
    cfg = ModelConfig(input_channels=DIM, hidden_dim=16, zdim=8, num_transformer_blocks=1, num_heads=2,
                      ff_dim=32, dropout=0.0)
    model = build_model(cfg).eval()
    save_weights(root / "run" / "best", model, cfg)
    return root, items, model


def common(root):
    return ["--checkpoint", root / "run", "--store", root / "features", "--dataset", "csv",
            "--metadata", root / "split.csv", "--split", "test", "--chunk", "12", "--overlap", "0.5"]
