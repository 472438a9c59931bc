"""The real `wealy` executable: help, version, store commands, and error handling."""

from __future__ import annotations

import h5py
import numpy as np
from helpers.cli import assert_user_error, run_wealy
from helpers.stores import make_store

from wealy_cli import __version__


def test_version_and_help():
    assert run_wealy("--version").stdout.strip() == f"wealy {__version__}"
    out = run_wealy("--help").stdout
    for command in ("extract", "train", "evaluate", "distances", "baselines", "fuse", "models", "store"):
        assert command in out
    assert "--install-completion" in out
    for bare in (("",), ("store",), ("models",)):  # a group without a command shows its help
        proc = run_wealy(*[a for a in bare if a])
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: wealy"), proc.stderr


def test_store_info_and_verify(tmp_path):
    rng = np.random.default_rng(1)
    make_store(tmp_path / "s", {f"c{i % 2}/{i}": rng.standard_normal((4 + i, 8)) for i in range(6)}, 8)
    info = run_wealy("store", "info", tmp_path / "s")
    assert info.returncode == 0, info.stderr
    assert "items" in info.stdout and "6" in info.stdout
    ok = run_wealy("store", "verify", tmp_path / "s")
    assert ok.returncode == 0 and "no problems found" in ok.stdout
    shard = next((tmp_path / "s" / "shards").glob("*.h5"))
    with h5py.File(shard, "r+") as h5:
        h5["data"][0, 0] = np.inf
    bad = run_wealy("store", "verify", tmp_path / "s")
    assert bad.returncode == 1 and "NaN or Inf" in bad.stdout
    # --no-values skips the scan; the environment variable gives the same
    assert run_wealy("store", "verify", tmp_path / "s", "--no-values").returncode == 0
    assert run_wealy("store", "verify", tmp_path / "s", env={"WEALY_VALUES": "false"}).returncode == 0


def test_user_errors_are_one_line_exit_2(tmp_path):
    assert_user_error(run_wealy("store", "info", tmp_path / "missing"), "argument DIRECTORY",
                      "missing is not an existing directory")
    assert_user_error(run_wealy("store", "info", tmp_path), "not a wealy store")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("values: [1,\n")
    assert_user_error(run_wealy("store", "verify", tmp_path, "--config", bad_yaml), "bad.yaml", "invalid YAML")
    assert_user_error(run_wealy("store", "verify", tmp_path, "--config", tmp_path / "nope.yaml"),
                      "nope.yaml: file not found")
    typo = tmp_path / "typo.yaml"
    typo.write_text("valuez: false\n")
    assert_user_error(run_wealy("store", "verify", tmp_path, "--config", typo), "unknown setting 'valuez'")
    assert_user_error(run_wealy("store", "nope"), "No such command 'nope'")
    assert_user_error(run_wealy("store", "info", "--bogus"), "--bogus")
    assert_user_error(run_wealy("store", "verify", tmp_path, env={"WEALY_VALUES": "maybe"}),
                      "WEALY_VALUES")


def test_debug_shows_traceback(tmp_path):
    for args in (("--debug", "store", "info", tmp_path), ("store", "info", tmp_path, "--debug")):
        proc = run_wealy(*args)
        assert proc.returncode == 2 and "Traceback" in proc.stderr and "not a wealy store" in proc.stderr


def test_quiet_anywhere(tmp_path):
    make_store(tmp_path / "s", {"a/1": np.zeros((1, 4)), "a/2": np.ones((2, 4))}, 4)
    assert run_wealy("store", "info", tmp_path / "s", "--quiet").returncode == 0


def test_store_show_reads_what_was_stored(tmp_path):
    import csv
    import io
    import json

    windows = [{"start": 0.0, "end": 29.5, "rows": 3, "prompt_tokens": 2, "tokens": [1, 2, 3]}]
    make_store(tmp_path / "s", {"a/1": np.zeros((3, 4)), "a/2": np.ones((5, 4))}, 4, text="la vie en rose",
               language="fr", duration=29.5, windows=windows)
    table = run_wealy("store", "show", tmp_path / "s")
    assert table.returncode == 0 and "la vie en rose" in table.stdout and "a/2" in table.stdout
    items = json.loads(run_wealy("store", "show", tmp_path / "s", "a/2", "--format", "json").stdout)
    assert len(items) == 1 and items[0].pop("settings_hash")
    assert items == [{"key": "a/2", "rows": 5, "clique": "a", "version": "2", "text": "la vie en rose",
                      "language": "fr", "duration": 29.5, "windows": windows}]
    rows = list(csv.DictReader(io.StringIO(run_wealy("store", "show", tmp_path / "s", "--format", "csv").stdout)))
    assert [(r["key"], r["rows"], r["language"]) for r in rows] == [("a/1", "3", "fr"), ("a/2", "5", "fr")]
    assert_user_error(run_wealy("store", "show", tmp_path / "s", "b/9"), "no item 'b/9'")


def test_gpus_without_cuda_is_the_same_one_line_error_everywhere(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # the message is about machines without CUDA
    make_store(tmp_path / "s", {"a/1": np.zeros((3, 4)), "a/2": np.ones((5, 4))}, 4)
    for argv in (("extract", "whisper", "--limit", "1"), ("train", "--store", tmp_path / "s"),
                 ("evaluate", "--store", tmp_path / "s", "--checkpoint", tmp_path)):
        assert_user_error(run_wealy(*argv, "--gpus", "2"), "--gpus 2: no CUDA GPU is visible", "--gpus 0")
