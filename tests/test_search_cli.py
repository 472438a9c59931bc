"""`wealy index` and `wealy search` end to end on the bundled demo collection: a catalogue CSV of
audio paths only → real tiny.en extraction → index → search with audio files, keys and a CSV;
and every bad input refused with one line (exit 2), the index left as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_user_error, run_wealy

from wealy_cli.demo import bundled_collection

CLIQUES = ("arrow", "beauty", "bopeep", "clock")  # the demo's test songs: 3, 3, 3 and 4 versions


def demo_rows() -> list[dict[str, str]]:
    rows = list(csv.DictReader(bundled_collection().open()))
    return [r for r in rows if r["clique"] in CLIQUES]


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Songs copied next to two CSVs: a labelled one (to train a tiny model on) and a catalogue of
    paths and titles only (to index). Each is extracted once with the real tiny.en."""
    root = tmp_path_factory.mktemp("demo-search")
    audio = root / "audio"
    audio.mkdir()
    rows = demo_rows()
    for r in rows:
        shutil.copy(bundled_collection().parent / r["path"], audio / Path(r["path"]).name)
    with open(root / "labelled.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clique", "version", "path", "split"])
        writer.writerows([r["clique"], r["version"], f"audio/{Path(r['path']).name}", "test"] for r in rows)
    with open(root / "catalogue.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "title"])
        writer.writerows([f"audio/{Path(r['path']).name}", f"{r['clique'].title()} ({r['voice']})"] for r in rows)
    for name in ("labelled", "catalogue"):
        proc = run_wealy("-q", "extract", "whisper", "--dataset", "csv", "--metadata", root / f"{name}.csv",
                         "-o", root / f"{name}-store", "--gpus", "0")
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_wealy("-q", "train", "--store", root / "labelled-store", "--dataset", "csv", "--metadata",
                     root / "labelled.csv", "--split", "test", "--val-split", "test", "--output", root / "run",
                     "--hidden-dim", "64", "--zdim", "32", "--layers", "1", "--heads", "4", "--ff-dim", "128",
                     "--chunk", "512", "--loader-workers", "0", "--max-epochs", "4", "--warmup-epochs", "1",
                     "--lr", "2e-3", "--batch-size", "8", "--gpus", "0", "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_wealy("-q", "index", "build", "--checkpoint", root / "run", "--store", root / "catalogue-store",
                     "--dataset", "csv", "--metadata", root / "catalogue.csv", "-o", root / "index")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, rows


def random_checkpoint(run: Path, directory: Path) -> Path:
    import torch

    from wealy_cli.model.network import build_model, read_config, save_weights

    cfg = read_config(run / "best.safetensors")
    torch.manual_seed(123)
    save_weights(directory / "best", build_model(cfg), cfg)
    return directory


def search_json(*args: object) -> list[dict]:
    proc = run_wealy("-q", "search", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["queries"]


def song_of(result: dict) -> str:
    return Path(result["metadata"]["path"]).stem.rsplit("-", 1)[0]


def test_audio_query_finds_itself_then_its_versions(demo):
    root, rows = demo
    sizes = {c: sum(r["clique"] == c for r in rows) for c in CLIQUES}
    for name in ("clock-2.mp3", "arrow-0.mp3"):
        (query,) = search_json(root / "index", root / "audio" / name, "--top", "6")
        results = query["results"]
        assert query["query"] == str(root / "audio" / name)
        assert set(results[0]) >= {"rank", "key", "clique", "distance"}
        # The file itself, under the key its path gives it in the unlabelled catalogue, at ~0 ...
        assert results[0]["rank"] == 1 and results[0]["key"] == f"audio:{name}/0" and results[0]["distance"] < 1e-3
        assert results[0]["metadata"]["title"].startswith(name.split("-")[0].title())
        # ... then the other versions of its song, before any other song.
        song = name.rsplit("-", 1)[0]
        assert [song_of(r) for r in results[: sizes[song]]] == [song] * sizes[song]
        assert song_of(results[sizes[song]]) != song
        assert [r["rank"] for r in results] == list(range(1, 7))
        assert all(a["distance"] <= b["distance"] for a, b in zip(results, results[1:]))


def test_key_query_csv_output_queries_file_and_info(demo):
    root, rows = demo
    by_key = search_json(root / "index", "--key", "audio:beauty-1.mp3/0", "--top", "3")[0]["results"]
    assert by_key[0]["key"] == "audio:beauty-1.mp3/0" and by_key[0]["distance"] < 1e-6
    proc = run_wealy("-q", "search", root / "index", "--key", "audio:beauty-1.mp3/0", "--top", "3", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(proc.stdout.splitlines()))
    assert [r["key"] for r in table] == [r["key"] for r in by_key]
    assert {"query", "rank", "key", "clique", "version", "distance", "title"} <= set(table[0])
    (root / "queries.csv").write_text("path\naudio/bopeep-2.mp3\naudio/clock-0.mp3\n")
    queries = search_json(root / "index", "--queries", root / "queries.csv", "--top", "2")
    assert [q["results"][0]["key"] for q in queries] == ["audio:bopeep-2.mp3/0", "audio:clock-0.mp3/0"]
    proc = run_wealy("search", root / "index", "--key", "audio:clock-3.mp3/0", "--top", "2")
    assert proc.returncode == 0 and "audio:clock-3.mp3/0" in proc.stdout and "distance" in proc.stdout
    info = run_wealy("index", "info", root / "index")
    assert info.returncode == 0 and "│ songs " in info.stdout and "flat" in info.stdout
    assert f"│ {len(rows)} " in info.stdout
    again = run_wealy("-q", "index", "add", root / "index", "--store", root / "catalogue-store", "--dataset", "csv",
                      "--metadata", root / "catalogue.csv")
    assert again.returncode == 0 and "added now" in again.stdout
    assert json.loads((root / "index" / "manifest.json").read_text())["songs"] == len(rows)


def test_bad_inputs_one_line_and_index_unchanged(demo, tmp_path):
    root, _ = demo
    index = root / "index"
    digest = tree_digest(index)
    bad_audio = REPO / "tests" / "data" / "audio" / "text.mp3"
    assert_user_error(run_wealy("search", index, bad_audio), str(bad_audio), "cannot be used as a query")
    assert_user_error(run_wealy("search", index, "--key", "nope/0"), "--key 'nope/0': not in the index")
    other = random_checkpoint(root / "run", tmp_path / "other")  # same architecture, other weights
    assert_user_error(run_wealy("search", index, root / "audio" / "arrow-1.mp3", "--checkpoint", other),
                      f"--checkpoint {other}", "are not those the index", "was built with")
    assert_user_error(run_wealy("search", index), "exactly one of them")
    assert_user_error(run_wealy("evaluate", "--checkpoint", root / "run", "--store", root / "catalogue-store",
                                "--dataset", "csv", "--metadata", root / "catalogue.csv", "-o", tmp_path / "ev"),
                      "catalogue.csv", "need labelled versions")
    assert tree_digest(index) == digest
    for how, fragment in (("garbage", "manifest is not valid JSON"), ("newer", "is newer than this wealy reads")):
        broken = tmp_path / f"index-{how}"
        shutil.copytree(index, broken)
        manifest = json.loads((broken / "manifest.json").read_text())
        (broken / "manifest.json").write_text("{oops" if how == "garbage" else json.dumps({**manifest, "version": 2}))
        before = tree_digest(broken)
        assert_user_error(run_wealy("search", broken, "--key", "audio:arrow-1.mp3/0"), str(broken), fragment)
        assert_user_error(run_wealy("index", "add", broken, "--store", root / "catalogue-store"), fragment)
        assert_user_error(run_wealy("index", "info", broken), fragment)
        assert tree_digest(broken) == before


def test_lyrics_and_audio_in_one_search(demo, tmp_path):
    """An index that also holds CLEWS embeddings of the songs: --alpha fuses both distances for
    an audio query, whose CLEWS embeddings come from the same (tiny, random) CLEWS checkpoint."""
    from test_clews_cli import tiny_checkpoint

    root, rows = demo
    ckpt = tiny_checkpoint(tmp_path / "clews.ckpt")
    proc = run_wealy("-q", "extract", "clews", "--checkpoint", ckpt, "--dataset", "csv", "--metadata",
                     root / "catalogue.csv", "--split", "test", "-o", tmp_path / "clews", "--loader-workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_wealy("-q", "index", "build", "--checkpoint", root / "run", "--store", root / "catalogue-store",
                     "--dataset", "csv", "--metadata", root / "catalogue.csv", "-o", tmp_path / "index",
                     "--clews-store", tmp_path / "clews")
    assert proc.returncode == 0, proc.stderr[-3000:]
    query = root / "audio" / "bopeep-1.mp3"
    for normalize in ("none", "zscore"):
        (fused,) = search_json(tmp_path / "index", query, "--alpha", "0.5", "--normalize", normalize,
                               "--clews-checkpoint", ckpt, "--top", str(len(rows)))
        hits = fused["results"]
        assert len(hits) == len(rows) and hits[0]["key"] == "audio:bopeep-1.mp3/0"
        assert hits[0]["lyrics_distance"] < 1e-3 and hits[0]["audio_distance"] < 1e-6
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
        if normalize == "none":  # fused = lyrics + alpha · audio
            for h in hits:
                assert abs(h["distance"] - (h["lyrics_distance"] + 0.5 * h["audio_distance"])) < 2e-6
    # the zscore statistics come from the index's all-against-all matrices of both modalities
    with np.load(tmp_path / "index" / "fusion.npz") as matrices:
        assert matrices["lyrics_top1"].shape == matrices["audio"].shape == (len(rows), len(rows))
    assert_user_error(run_wealy("search", tmp_path / "index", query, "--alpha", "0.5"), "--clews-checkpoint")
    assert_user_error(run_wealy("search", root / "index", "--key", "audio:bopeep-1.mp3/0", "--alpha", "1"),
                      "holds no CLEWS embeddings")
