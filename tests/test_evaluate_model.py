"""`wealy evaluate --model NAME`: a published model from an offline Hugging Face cache, with the
dataset and topk taken from the model's configuration, checked against a dense reference."""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers.cli import run_wealy
from helpers.hub import COMMIT_A, add_snapshot, original_repo_files
from helpers.metrics_reference import expected_by_groups, per_query
from helpers.original import SIZES
from helpers.stores import make_store


def discogs_split(directory, cliques: dict[str, list[str]]):
    directory.mkdir(parents=True, exist_ok=True)
    light = {c: [{"version_id": v, "youtube_id": f"yt{c}{v}"} for v in vs] for c, vs in cliques.items()}
    (directory / "Discogs-VI-YT-20240701-light.json.test").write_text(json.dumps(light))
    (directory / "Discogs-VI-YT-20240701-light.json.train").write_text("{}")


def test_evaluate_published_model_offline(tmp_path, offline):  # noqa: F811
    files, original = original_repo_files(tmp_path / "src")  # configuration says discogs-vi, topk 3
    add_snapshot(tmp_path / "hub", "audio-based-lyrics-matching/wealy-whisper-dvi", COMMIT_A, files)
    rng = np.random.default_rng(3)
    cliques = {f"C{c}": [f"V{c}{v}" for v in range(3)] for c in range(6)}
    discogs_split(tmp_path / "meta", cliques)
    base = {c: rng.standard_normal((1, SIZES["input_channels"])) for c in cliques}
    items = {f"{c}/{v}": (base[c] + 0.8 * rng.standard_normal((int(rng.integers(5, 30)), SIZES["input_channels"])))
             .astype(np.float16) for c, vs in cliques.items() for v in vs}
    make_store(tmp_path / "store", items, SIZES["input_channels"])

    proc = run_wealy("evaluate", "--model", "wealy-whisper-dvi", "--store", tmp_path / "store",
                     "--metadata", tmp_path / "meta", "--output", tmp_path / "out",
                     env=offline)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    settings = (tmp_path / "out" / "settings.yaml").read_text()
    assert "dataset: discogs-vi" in settings and "topk: 3" in settings

    # Reference: the original module on each whole song (one chunk each), cosine distances, dense ranks.
    keys = list(items)
    with torch.no_grad():
        z = torch.cat([original(torch.from_numpy(items[k].astype(np.float32))[None]) for k in keys])
    z = torch.nn.functional.normalize(z, dim=1).numpy()
    dist = 1 - z @ z.T
    cliques = [k.split("/")[0] for k in keys]
    ap, first, rp = per_query(expected_by_groups, dist, cliques, cliques, list(range(len(keys))))
    metrics = results["metrics"]
    assert metrics["n_queries"] == len(keys)
    assert abs(metrics["map"] - ap.mean()) < 2e-3  # chunk embeddings are cached as float16
    assert abs(metrics["mr1"] - first.mean()) < 0.1

    # The model decides the dataset: contradicting it is a one-line user error.
    bad = run_wealy("evaluate", "--model", "wealy-whisper-dvi", "--dataset", "shs", "--store", tmp_path / "store",
                    env=offline)
    assert bad.returncode == 2 and "contradicts --model wealy-whisper-dvi" in bad.stderr
    assert "Traceback" not in bad.stderr
