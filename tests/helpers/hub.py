"""A real Hugging Face hub cache layout, filled locally (the hub network is the one thing tests
cannot reach)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml

from helpers.original import OriginalModel, write_original

COMMIT_A = "a1" * 20
COMMIT_B = "b2" * 20


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main") -> Path:
    """huggingface_hub's cache layout: blobs/<sha256>, snapshots/<commit>/<name> → blob, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def original_repo_files(tmp: Path, avg: bool = False, seed: int = 0) -> tuple[dict[str, bytes], OriginalModel]:
    torch.manual_seed(seed)
    reference = OriginalModel(avg).eval()
    ckpt, config = write_original(tmp, reference, avg)
    conf = yaml.safe_load(config.read_text())
    conf["data"]["dataset_name"] = "discogs-vi"
    conf["evaluation"] = {"topk_distance": 3}
    return {"best.ckpt": ckpt.read_bytes(), "configuration.yaml": yaml.safe_dump(conf).encode()}, reference
