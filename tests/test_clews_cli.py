"""`wealy extract clews` end to end: a real (small) checkpoint in the official layout, real audio
files, the real CLI process, a real store; then song distances from that store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import REPO, run_wealy, run_wealy_process

from wealy_cli.clews.distances import clews_song_distances
from wealy_cli.clews.extract import extract_clews
from wealy_cli.clews.model import ClewsConfig, ClewsModel, load_clews
from wealy_cli.commands.extract import ExtractClewsSettings
from wealy_cli.core.audio import load_audio
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import load_settings
from wealy_cli.core.store import Store

AUDIO = REPO / "tests" / "data" / "audio"
ENV = {"OMP_NUM_THREADS": "1"}


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = ClewsModel(ClewsConfig(frontend_channels=(4, 8), blocks=(1, 1, 1, 1), channels=(8, 16, 32, 64), zdim=16))
    for p in model.parameters():
        if p.ndim:
            torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        for block in model.backbone:
            block.gain.fill_(0.5)  # the published init is 0 (skip path only); exercise both paths
    torch.save({"model": model.state_dict(), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clews")
    listing = tmp / "songs.csv"
    listing.write_text("clique,version,path\n"
                       f"a,1,{AUDIO / 'tiny.wav'}\n"       # 0.1 s: shorter than one shingle
                       f"a,2,{AUDIO / 'silence.mp3'}\n"    # 20 s: exactly one shingle
                       f"b,1,{AUDIO / 'long.mp3'}\n"       # 38 s, capped at 30 s by --max-seconds
                       f"b,2,{AUDIO / 'text.mp3'}\n"       # not audio
                       f"b,3,{AUDIO / 'tiny.wav'}\n")
    ckpt = tiny_checkpoint(tmp / "checkpoint_best.ckpt")
    out = tmp / "store"
    args = ("extract", "clews", "--checkpoint", ckpt, "--dataset", "csv", "--metadata", listing,
            "--out", out, "--max-seconds", "30", "--batch-size", "2", "--loader-workers", "1")
    first = run_wealy(*args, env=ENV)
    # resume through the library: nothing is left to do
    second = extract_clews(load_settings(ExtractClewsSettings, checkpoint=ckpt, dataset="csv", metadata=listing,
                                          out=out, max_seconds=30, loader_workers=0))
    return ckpt, out, first, second


def test_extract_writes_one_matrix_per_song(extracted):
    ckpt, out, first, _ = extracted
    assert first.returncode == 0, first.stderr
    store = Store(out)
    assert sorted(store.keys()) == ["a/1", "a/2", "b/1", "b/3"]
    assert store.dim == 16
    assert store.rows("a/1") == 1
    assert store.rows("a/2") == 1
    assert store.rows("b/1") == 3  # 30 s: 1 + ceil((30 - 20) / 5)
    assert store.failures()["b/2"]["reason"].startswith("cannot decode audio")
    assert store.attrs("b/1")["shingles"] == 3 and store.attrs("b/1")["clique"] == "b"
    assert (out / "extract_clews.yaml").is_file()


def test_stored_embeddings_match_the_model_on_hand_cut_shingles(extracted):
    ckpt, out, _, _ = extracted
    store = Store(out)
    model = load_clews(ckpt)
    sr = 16000
    tiny = load_audio(AUDIO / "tiny.wav")
    tiled = np.tile(tiny, 20 * sr // len(tiny) + 1)[: 20 * sr]  # repeat padding, cut by hand
    long = load_audio(AUDIO / "long.mp3", max_seconds=30)
    assert len(long) == 30 * sr
    long_shingles = [long[0:20 * sr], long[5 * sr:25 * sr], long[10 * sr:30 * sr]]
    with torch.inference_mode():
        ref_tiny = model(torch.from_numpy(tiled[None])).numpy()
        ref_long = model(torch.from_numpy(np.stack(long_shingles))).numpy()
    np.testing.assert_allclose(store["a/1"].astype(np.float32), ref_tiny, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(store["b/1"].astype(np.float32), ref_long, rtol=2e-3, atol=2e-3)


def test_resume_skips_stored_songs(extracted):
    _, out, first, second = extracted
    assert "stored" in first.stdout and "failed" in first.stdout
    assert (second.stored, second.skipped, second.failed) == (0, 4, 1)  # the bad file is tried again
    assert len(Store(out)) == 4


def test_distances_from_the_extracted_store(extracted):
    _, out, _, _ = extracted
    store = Store(out)
    keys = sorted(store.keys())
    dist = clews_song_distances(store, keys, keys, redux="bpwr-5", block=3)
    arrays = [store[k].astype(np.float64) for k in keys]
    for i, a in enumerate(arrays):
        for j, b in enumerate(arrays):
            d = ((a[:, None] - b[None]) ** 2).sum(-1) / a.shape[1]
            # these songs have at most 3 shingles: with 1 shingle on a side, bpwr is the min
            if min(d.shape) == 1:
                assert dist[i, j] == pytest.approx(d.min(), rel=1e-4, abs=1e-6)
    assert np.allclose(np.diag(dist), 0, atol=1e-6)


def test_clews_matrix_fuses_with_another_modality(extracted, tmp_path: Path):
    """extract → CLEWS matrix file (the original pickle layout) → `wealy fuse` with a lyrics matrix."""
    import json

    from wealy_cli.clews.distances import clews_distance_matrix
    from wealy_cli.cli import main
    from wealy_cli.core.datasets import load_split
    from wealy_cli.ranking.matrixfile import DistanceMatrix, read_matrix, write_matrix

    _, out, _, _ = extracted
    listing = out.parent / "songs.csv"
    split = load_split("csv", "test", listing, check_audio=False)
    clews = clews_distance_matrix(Store(out), split, redux="bpwr-5")
    assert clews.query_keys == ["a/1", "a/2", "b/1", "b/3"]  # b/2 failed: restricted away
    write_matrix(tmp_path / "clews.pkl", clews)
    assert read_matrix(tmp_path / "clews.pkl").query_keys == clews.query_keys
    lyrics = DistanceMatrix(np.array([[0, .1, .9, .9], [.1, 0, .9, .9], [.9, .9, 0, .1], [.9, .9, .1, 0]]),
                            clews.query_keys, clews.query_keys, clews.query_cliques, clews.query_cliques)
    write_matrix(tmp_path / "lyrics.npz", lyrics)
    code = main(["--quiet", "fuse", str(tmp_path / "lyrics.npz"), str(tmp_path / "clews.pkl"),
                 "-o", str(tmp_path / "fused"), "--alphas", "0:1:0.5"])
    assert code == 0
    summary = json.loads((tmp_path / "fused" / "fusion_summary.json").read_text())
    clews_side = next(a for a in summary["alignment"] if a["input"] == "clews")
    assert (clews_side["queries kept"], clews_side["queries lost"]) == (4, 0)  # keys align with the lyrics side
    assert (tmp_path / "fused" / "fusion_results.csv").read_text().count("\n") >= 3


def test_bad_checkpoint_and_options_are_user_errors(tmp_path: Path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    listing = tmp_path / "s.csv"
    listing.write_text(f"clique,version,path\na,1,{AUDIO / 'fox.mp3'}\na,2,{AUDIO / 'fire.ogg'}\n")
    r = run_wealy("extract", "clews", "--checkpoint", junk, "--dataset", "csv", "--metadata", listing,
                  "--out", tmp_path / "o", env=ENV)
    assert r.returncode == 2 and "junk.ckpt" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UserError, match="--hop"):
        load_settings(ExtractClewsSettings, checkpoint=junk, dataset="csv", metadata=listing, out=tmp_path / "o",
                      hop=0)
    with pytest.raises(UserError, match="--shingle-seconds"):
        load_settings(ExtractClewsSettings, checkpoint=junk, dataset="csv", metadata=listing, out=tmp_path / "o",
                      max_seconds=10)


@pytest.mark.slow
def test_worker_processes_split_the_songs(tmp_path: Path):
    """--workers 2: two processes of the launcher, each with its own writer, give the store of one."""
    listing = tmp_path / "songs.csv"
    listing.write_text("clique,version,path\n"
                       f"a,1,{AUDIO / 'tiny.wav'}\na,2,{AUDIO / 'empty.mp3'}\n"
                       f"b,1,{AUDIO / 'silence.mp3'}\nb,2,{AUDIO / 'tiny.wav'}\n")
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    common = ("extract", "clews", "--checkpoint", ckpt, "--dataset", "csv", "--metadata", listing,
              "--loader-workers", "0", "--quiet")
    two = run_wealy_process(*common, "--out", tmp_path / "store", "--gpus", "0", "--workers", "2", env=ENV,
                            timeout=300)
    assert two.returncode == 0, two.stderr
    assert "│ stored" in two.stdout and two.stdout.count("CLEWS embeddings in") == 1  # rank 0 alone reports
    store = Store(tmp_path / "store")
    assert sorted(store.keys()) == ["a/1", "b/1", "b/2"] and list(store.failures()) == ["a/2"]
    shards = {p.name.split("-")[0]: p for p in (tmp_path / "store" / "shards").glob("*.h5")}
    assert sorted(shards) == ["w0", "w1"]  # rank 0: a/1, b/1; rank 1: a/2 (fails), b/2
    # the same file embedded by the two processes gives the same rows
    np.testing.assert_array_equal(store["a/1"], store["b/2"])
    one = run_wealy(*common, "--out", tmp_path / "one", env=ENV)
    assert one.returncode == 0, one.stderr
    for key in store.keys():
        np.testing.assert_array_equal(Store(tmp_path / "one")[key], store[key])


def test_distances_command_with_clews_features(extracted, tmp_path: Path):
    """`wealy distances --features clews --redux min` equals a brute-force min over shingle pairs."""
    from wealy_cli.cli import main
    from wealy_cli.ranking.matrixfile import read_matrix

    _, out, _, _ = extracted
    listing = out.parent / "songs.csv"
    code = main(["--quiet", "distances", "--features", "clews", "--store", str(out), "--dataset", "csv",
                 "--metadata", str(listing), "--redux", "min", "-o", str(tmp_path / "clews.npz")])
    assert code == 0
    m = read_matrix(tmp_path / "clews.npz")
    store = Store(out)
    for i, qk in enumerate(m.query_keys):
        a = store[qk].astype(np.float64)
        for j, ck in enumerate(m.candidate_keys):
            b = store[ck].astype(np.float64)
            expected = (((a[:, None] - b[None]) ** 2).sum(-1) / a.shape[1]).min()
            assert m.distances[i, j] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert main(["distances", "--features", "clews", "--store", str(out), "--metadata", str(listing),
                 "--dataset", "csv", "--redux", "best-3", "-o", str(tmp_path / "x.npz")]) == 2
