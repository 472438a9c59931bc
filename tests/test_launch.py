"""The launcher (core.launch): two 'nodes' on loopback, each a real torchrun (gloo, CPU), give the
results of one process, exit 0 on every rank every time, lock a directory once, and stop together
with one line when a rank fails or its node dies; the processes it starts itself do the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import REPO, assert_user_error, run_wealy, run_wealy_process
from helpers.evaluation import common
from helpers.nodes import kill_node, parent_of, process_tree, run_nodes, start_nodes, wait_nodes
from helpers.training import TINY_CFG, build_separable, train_args

from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.launch import Devices, Workers, check_world, exit_text, started_by
from wealy_cli.core.lock import read_holder
from wealy_cli.core.store import Store
from wealy_cli.model.options import TrainRun
from wealy_cli.model.training import STATE, train

AUDIO = REPO / "tests" / "data" / "audio"
# Two cliques of two, shared versions[rank::2]: rank 0 gets fire/a and odd/t (a 0.7 s fragment),
# rank 1 fire/b and odd/x (a text file: a recorded failure).
SONGS = {"fire/a": "fire.ogg", "fire/b": "fox.mp3", "odd/t": "truncated.mp3", "odd/x": "text.mp3"}
ENV = {"OMP_NUM_THREADS": "1"}  # the same for the one-process reference and every node
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                "SLURM_JOB_NAME", "MASTER_ADDR")


# ---------------------------------------------------------------- without processes


@pytest.fixture
def no_launcher(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_counts_that_torchrun_or_srun_started_must_match_the_flags(no_launcher):
    cpu2 = Devices("cpu", 2)
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "x")
    no_launcher.setenv("LOCAL_WORLD_SIZE", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    assert started_by() == "torchrun"
    with pytest.raises(UserError, match=r"torchrun started 1 process\(es\) per node .* --workers 2 asks for 2"):
        check_world(cpu2, 1)
    with pytest.raises(UserError, match="give --nodes 2"):
        check_world(Devices("cpu", 1), 1)  # two nodes of one process, but --nodes not given
    check_world(Devices("cpu", 1), 2)
    no_launcher.delenv("TORCHELASTIC_RUN_ID")
    no_launcher.setenv("SLURM_NTASKS", "4")
    no_launcher.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert started_by() == "slurm"
    with pytest.raises(UserError, match="srun --nodes 2 --ntasks-per-node 4"):
        check_world(Devices("cuda", 4), 2)
    check_world(cpu2, 2)
    no_launcher.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's rule: not a SLURM-managed run
    assert started_by() == "wealy"
    with pytest.raises(UserError, match="--nodes 2: start the command on every machine with torchrun or srun"):
        check_world(cpu2, 2)


def test_nodes_without_a_launcher_is_one_line(no_launcher, eval_setup, tmp_path):
    root, _, _ = eval_setup
    result = run_wealy("evaluate", *common(root), "--output", tmp_path / "e", "--nodes", "2")
    assert_user_error(result, "--nodes 2", "torchrun or srun")
    assert not (tmp_path / "e").exists()
    assert_user_error(run_wealy("extract", "clews", "--checkpoint", root / "split.csv", "--out", tmp_path / "c",
                                "--peer-timeout", "0"), "--peer-timeout", "greater than 0")


def test_one_process_needs_no_process_group():
    workers = Workers()
    assert (workers.rank, workers.world, workers.is_main) == (0, 1, True)
    assert workers.share(list("abcde")) == list("abcde")
    t = torch.arange(3.0)
    assert workers.all_reduce(t) is t and workers.gather_object("x") == ["x"] and workers.broadcast(5) == 5
    workers.check_same(["a"], "x")
    assert Workers(rank=1, world=3).share(list("abcdefg")) == ["b", "e"]
    assert (exit_text(-9), exit_text(2)) == ("signal SIGKILL", "exit code 2")


# ---------------------------------------------------------------- extraction on two nodes


def write_csv(path: Path, songs: dict[str, str]) -> Path:
    rows = [f"{k.split('/')[0]},{k.split('/')[1]},{AUDIO / f}" for k, f in songs.items()]
    path.write_text("clique,version,path\n" + "\n".join(rows) + "\n")
    return path


def extract_args(csv: Path, out: Path, *extra: object) -> list[object]:
    return ["extract", "whisper", "--dataset", "csv", "--metadata", csv, "-o", out, "--quiet", *extra]


def assert_same_store(a: Path, b: Path) -> None:
    one, other = Store(a), Store(b)
    assert sorted(one.keys()) == sorted(other.keys())
    for key in one.keys():
        assert np.array_equal(one[key], other[key]), key  # bitwise
        assert one.attrs(key) == other.attrs(key), key
    assert {k: v["reason"] for k, v in one.failures().items()} == {k: v["reason"] for k, v in other.failures().items()}


@pytest.fixture(scope="module")
def extraction(tmp_path_factory):
    """One process, then three two-node runs in a row, each into a fresh store, with the store's
    lock holder watched while they run."""
    root = tmp_path_factory.mktemp("nodes-extract")
    csv = write_csv(root / "songs.csv", SONGS)
    one = run_wealy_process(*extract_args(csv, root / "one"), env=ENV)
    runs = []
    for i in range(3):
        out = root / f"two{i}"
        nodes = start_nodes([extract_args(csv, out, "--nodes", "2")] * 2, root / f"logs{i}", ENV)
        holders: dict[int, int] = {}  # lock holder pid → its parent, seen while the run held the lock

        def watch(out: Path = out, holders: dict[int, int] = holders) -> None:
            holder = read_holder(out)
            if holder is not None and holder.pid not in holders:
                try:
                    holders[holder.pid] = parent_of(holder.pid)
                except (OSError, IndexError):
                    holders[holder.pid] = -1  # ended meanwhile

        runs.append((out, wait_nodes(nodes, poll=watch), holders))
    return root, csv, one, runs


def without_agent_exit_barrier(stderr: str) -> str:
    """stderr without torchrun's own exit-barrier error: after every worker has exited 0, the
    agent that hosts the rendezvous store may leave before the other agent has read the barrier
    key (a torchrun race, pytorch/pytorch#69520); that agent then logs a traceback and still
    exits 0. Nothing of wealy's processes is in those lines."""
    return "\n".join(line for line in stderr.splitlines() if "elastic/agent/server/api.py" not in line)


@pytest.mark.slow
def test_two_nodes_exit_cleanly_every_time_and_store_what_one_process_does(extraction):
    root, _, one, runs = extraction
    assert one.returncode == 0, one.stderr
    assert set(Store(root / "one").failures()) == {"odd/x"}
    for out, nodes, _ in runs:
        for node in nodes:
            assert node.returncode == 0, node.stderr[-3000:]
            ours = without_agent_exit_barrier(node.stderr)
            assert "terminate called" not in ours and "Traceback" not in ours
        assert_same_store(root / "one", out)
        assert sorted(p.name.split("-")[0] for p in Store(out).shards) == ["w0", "w1"]  # both ranks wrote
        assert "Whisper decoder features in" in nodes[0].stdout and "│ stored now" in nodes[0].stdout
        assert nodes[1].stdout.strip() == ""  # rank 0 alone reports
        assert (out / "extract_whisper.yaml").is_file()


@pytest.mark.slow
def test_a_two_node_run_locks_the_store_once_from_rank_0(extraction):
    _, _, _, runs = extraction
    for out, nodes, holders in runs:
        assert len(holders) == 1, holders  # one holder for the whole run
        (pid, parent), = holders.items()
        assert parent == nodes[0].process.pid  # node 0's torchrun started it: rank 0
        assert read_holder(out) is None  # released at the end


@pytest.mark.slow
def test_a_node_that_dies_stops_the_other_and_a_rerun_resumes(extraction, tmp_path):
    root, csv, _, _ = extraction
    out = tmp_path / "store"
    args = extract_args(csv, out, "--nodes", "2")
    nodes = start_nodes([[*args, "--peer-timeout", "10"]] * 2, tmp_path / "logs", ENV)
    deadline = time.monotonic() + 180
    while read_holder(out) is None:  # rank 0 holds the lock: both ranks are in the run
        assert time.monotonic() < deadline and nodes[0].process.poll() is None, nodes[0].stderr
        time.sleep(0.05)
    kill_node(nodes[1])  # before rank 1 has loaded its model: its share is not done
    killed = time.monotonic()
    wait_nodes([nodes[0]], timeout=120)
    assert nodes[0].ended - killed < 60
    assert nodes[0].worker_exit_code() == 1
    (line,) = nodes[0].errors()
    assert "rank 1 of 2" in line and "no sign of life for 10 s" in line and "rerun to resume" in line
    assert "Traceback" not in nodes[0].stderr.split("error:")[0]  # the worker said one line, no traceback
    assert set(Store(out).keys()) <= {"fire/a", "odd/t"}  # rank 0's share at most: rank 1's was lost
    rerun = run_nodes([args] * 2, tmp_path / "logs2", ENV)
    assert [n.returncode for n in rerun] == [0, 0], rerun[0].stderr[-3000:]
    assert_same_store(root / "one", out)


# ---------------------------------------------------------------- training on two nodes


@pytest.mark.slow
def test_two_nodes_train_like_one_process_with_the_same_global_batch(tmp_path):
    """Batch 8 on each of two nodes = batch 16 on one: the same loss curve and weights."""
    store_dir, csv_path = build_separable(tmp_path, train_cliques=24, val_cliques=6)
    common_args = ["--dropout", "0", "--max-epochs", "1", "--limit-batches", "3"]
    args = train_args(store_dir, csv_path, tmp_path / "two", *common_args, "--batch-size", "8", "--nodes", "2")
    nodes = run_nodes([args, args], tmp_path / "logs", ENV)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    assert all("terminate called" not in n.stderr for n in nodes)
    assert "best val MAP" in nodes[0].stdout and nodes[1].stdout.strip() == ""
    store = Store(store_dir)
    train_split = load_split("csv", "train", csv_path, check_audio=False).restrict(store.keys())
    val_split = load_split("csv", "val", csv_path, check_audio=False).restrict(store.keys())
    single = TrainRun(store=store_dir, output=tmp_path / "one", gpus=0, loader_workers=0, dropout=0.0, batch_size=16,
                      chunk=16, max_epochs=1, limit_batches=3, warmup_epochs=1, lr=3e-3, **TINY_CFG)
    result = train(single, store, train_split, val_split)
    a = torch.load(tmp_path / "one" / STATE, weights_only=True)
    b = torch.load(tmp_path / "two" / STATE, weights_only=True)
    assert (a["world_size"], b["world_size"]) == (1, 2) and a["step"] == b["step"] == 3
    np.testing.assert_allclose([r["train_loss"] for r in b["history"][1:]],
                               [r["train_loss"] for r in result.history[1:]], rtol=1e-4)
    assert [r["val_map"] for r in b["history"]] == pytest.approx([r["val_map"] for r in result.history], abs=1e-4)
    for name, weights in a["model"].items():
        if not name.endswith("self_attn.in_proj_bias"):  # its key part has no gradient (see test_train)
            torch.testing.assert_close(b["model"][name], weights, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- evaluation on two nodes


@pytest.mark.slow
def test_two_nodes_evaluate_exactly_like_one_process(eval_setup, tmp_path):
    root, _, _ = eval_setup
    args = ["evaluate", *common(root), "--topk", "2", "--quiet"]
    nodes = run_nodes([[*args, "--output", tmp_path / "two", "--nodes", "2"]] * 2, tmp_path / "logs", ENV)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    one = run_wealy(*args, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and b["info"]["workers"] == 2
    assert (tmp_path / "one" / "per_query.csv").read_text() == (tmp_path / "two" / "per_query.csv").read_text()
    assert sorted(p.name.split("-")[0] for p in Store(next((tmp_path / "two" / "cache").iterdir())).shards) == \
        ["w0", "w1"]  # both ranks embedded their share of the songs
    assert "queries" in nodes[0].stdout and nodes[1].stdout.strip() == ""


@pytest.mark.slow
def test_a_bad_input_on_one_node_stops_both_with_one_line(eval_setup, tmp_path):
    """Node 1 reads another split file (one version less): it fails, node 0 stops, in bounded time."""
    root, _, _ = eval_setup
    other = tmp_path / "other.csv"
    other.write_text("".join((root / "split.csv").read_text().splitlines(keepends=True)[:-1]))
    args = ["evaluate", *common(root), "--output", tmp_path / "run", "--nodes", "2", "--quiet"]
    node1 = [a if a != root / "split.csv" else other for a in args]
    nodes = run_nodes([args, node1], tmp_path / "logs", ENV, timeout=180)
    assert [n.worker_exit_code() for n in nodes] == [2, 2], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    assert abs(nodes[0].ended - nodes[1].ended) < 60
    (own,) = nodes[1].errors()
    assert own.startswith("error: the versions to embed") and "differs from rank 0's (29 items" in own
    (stopped,) = nodes[0].errors()
    assert stopped.startswith("error: stopped: rank 1 of 2 on ") and own.removeprefix("error: ") in stopped
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("features,suffix", [("wealy", ".npz"), ("wealy", ".h5"), ("clews", ".npz")])
def test_distances_shared_by_two_processes_equal_one_process(features, suffix, eval_setup, tmp_path):
    """The tile (CLEWS: block; .h5: row block) pairs are shared; rank 0 gathers them and writes."""
    from wealy_cli.core.store import StoreWriter
    from wealy_cli.ranking.matrixfile import read_matrix

    root, _, _ = eval_setup
    if features == "wealy":
        args = ["distances", *common(root), "--topk", "2", "--quiet"]
    else:  # a CLEWS store: songs of 1..6 shingles, so blocks of 2 songs give 10 block pairs
        rng = np.random.default_rng(3)
        with StoreWriter(tmp_path / "clews", 6, kind="clews") as writer:
            for i in range(8):
                writer.add(f"c{i // 2}/v{i}", rng.normal(size=(1 + i % 6, 6)).astype(np.float16))
        listing = tmp_path / "clews.csv"
        listing.write_text("clique,version,path\n" + "".join(f"c{i // 2},v{i},x.mp3\n" for i in range(8)))
        args = ["distances", "--features", "clews", "--store", tmp_path / "clews", "--dataset", "csv",
                "--metadata", listing, "--block", "2", "--quiet"]
    two = run_wealy_process(*args, "-o", tmp_path / f"two{suffix}", "--gpus", "0", "--workers", "2", env=ENV,
                            timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("wrote ") == 1  # rank 0 alone writes and says so
    one = run_wealy(*args, "-o", tmp_path / "one.npz")
    assert one.returncode == 0, one.stderr
    a, b = read_matrix(tmp_path / "one.npz"), read_matrix(tmp_path / f"two{suffix}")
    assert a.query_keys == b.query_keys and a.candidate_keys == b.candidate_keys
    np.testing.assert_allclose(b.distances, a.distances, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- processes the launcher starts itself


@pytest.mark.slow
def test_a_local_rank_that_dies_stops_rank_0_with_one_line(tmp_path):
    """--workers 2: the launcher starts rank 1 itself; SIGKILL it mid-training and rank 0 says so."""
    store_dir, csv_path = build_separable(tmp_path, train_cliques=24, val_cliques=6)
    args = train_args(store_dir, csv_path, tmp_path / "run", "--workers", "2", "--batch-size", "4")
    launcher = subprocess.Popen([sys.executable, "-m", "wealy_cli", *map(str, args), "--max-epochs", "200",
                                 "--peer-timeout", "10"], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **ENV})
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "run" / STATE).exists():  # epoch 0 is saved: both ranks are in the run
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.1)
        (child,) = [pid for pid in process_tree(launcher.pid) if pid != launcher.pid]
        os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert time.monotonic() - killed < 60 and launcher.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: stopped: rank 1 of 2 (pid {child}) ended with signal SIGKILL"], err[-3000:]
    resumed = run_wealy_process(*args, "--max-epochs", "2", "--resume", env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(tmp_path / "run" / STATE, weights_only=True)["epoch"] == 2
