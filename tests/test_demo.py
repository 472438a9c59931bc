"""`wealy demo` end to end on a small slice of the bundled collection (real tiny.en, real
training, real files), and the rerun that skips finished steps."""

from __future__ import annotations

import csv
import json
import time

import pytest
from helpers.cli import run_wealy, run_wealy_process

from wealy_cli.demo import bundled_collection


def small_collection(path, per_split: int = 2, versions: int = 2):
    """``per_split`` songs per split, ``versions`` versions each, from the bundled collection."""
    rows = list(csv.DictReader(bundled_collection().open()))
    audio_root = bundled_collection().parent
    chosen, songs = [], {"train": [], "val": [], "test": []}
    for row in rows:
        split_songs = songs[row["split"]]
        if row["clique"] not in split_songs and len(split_songs) < per_split:
            split_songs.append(row["clique"])
        if row["clique"] in split_songs and int(row["version"]) < versions:
            chosen.append({**row, "path": str(audio_root / row["path"])})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["clique", "version", "path", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(chosen)
    return len(chosen)


@pytest.mark.slow
def test_demo_runs_every_step_then_skips_them(tmp_path):
    n = small_collection(tmp_path / "small.csv")
    assert n == 12
    args = ("demo", "--collection", tmp_path / "small.csv", "--run-dir", tmp_path / "run",
            "--train-minutes", "0.05", "--max-epochs", "2")
    first = run_wealy_process(*args, timeout=900)  # the real executable, once
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "comparison.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["extract whisper", "extract sbert", "baselines", "baselines val",
                                                     "train", "evaluate", "distances", "distances val", "fuse val",
                                                     "fuse"]
    assert not any(s["skipped"] for s in summary["steps"])
    rows = {r["method"].split(" (")[0]: r for r in summary["rows"]}
    assert rows["ideal"]["map"] == 1.0  # oracle: every same-clique candidate first
    wealy, fused = rows["WEALY late interaction"], next(r for r in summary["rows"] if r["kind"] == "fusion")
    val_fusion = json.loads((run / "fuse-val" / "fusion_summary.json").read_text())["best"]
    alpha = next(iter(val_fusion["weights"].values()))
    assert f"α={alpha:g} chosen on val" in fused["method"]  # test is fused at the weight validation picked
    if alpha == 0:
        assert fused["map"] == pytest.approx(wealy["map"])
    assert summary["training"]["epochs"] >= 1 and 0 <= summary["training"]["best_epoch"] <= 2
    assert (run / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in ("stores/whisper/manifest.json", "stores/sbert/manifest.json", "baselines/baseline_results.json",
                 "train/best.safetensors", "evaluate/results.json", "evaluate/wealy-test.npz", "evaluate/wealy-val.npz",
                 "baselines-val/baseline_results.json", "fuse-val/fusion_summary.json",
                 "fuse/fusion_results.csv", "settings.yaml"):
        assert (run / path).is_file(), path

    start = time.perf_counter()
    second = run_wealy(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((run / "comparison.json").read_text())
    assert all(s["skipped"] for s in again["steps"])
    assert again["rows"] == summary["rows"]
    assert time.perf_counter() - start < 60
