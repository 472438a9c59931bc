"""Two runs on one directory never lose data (issue 20): the run lock with real processes (refusal
naming the holder, SIGKILL never leaves it locked, waiting, ranks), then the commands that write a
directory as a whole: `extract whisper`, `train`, `evaluate`'s chunk-embedding cache."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest
import torch
from helpers.cli import REPO, run_wealy

from wealy_cli.core.lock import LOCK_FILE, LockedError, active_holder, is_launcher, read_holder, run_lock

HELPERS = Path(__file__).parent / "helpers"
AUDIO = Path(__file__).parent / "data" / "audio"
HOST = socket.gethostname()


def env_for_children() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    return {**env, "PYTHONPATH": str(REPO)}


def hold_lock(directory: Path, seconds: float | str, marker: Path | None = None) -> subprocess.Popen:
    """A real process holding ``directory``'s run lock for ``seconds`` (or "until=FILE" exists);
    returns once it holds it."""
    proc = subprocess.Popen([sys.executable, str(HELPERS / "lock_holder.py"), str(directory), str(seconds),
                             *([str(marker)] if marker else [])], stdout=subprocess.PIPE, text=True,
                            env=env_for_children())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def wealy_process(*args: object, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wealy_cli", *map(str, args)], cwd=cwd, env=env_for_children(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_holder(directory: Path, pid: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the lock file of ``directory`` names ``pid`` (the process then holds the lock)."""
    deadline = time.monotonic() + timeout
    while (holder := read_holder(directory)) is None or holder.pid != pid:
        assert proc.poll() is None, f"exited {proc.returncode} before locking: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run never took the lock"
        time.sleep(0.05)


def assert_one_line_naming(stderr: str, pid: int) -> None:
    """The refusal is one 'error:' line naming the holder (a command may print a step line first)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip().endswith(lines[0]), stderr
    assert f"pid {pid} on host {HOST} since " in lines[0], lines[0]
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[0]), lines[0]


# ---------------------------------------------------------------- the lock itself


def test_a_held_lock_refuses_naming_pid_host_start_and_command(tmp_path):
    holder = hold_lock(tmp_path / "d", 60)
    try:
        with pytest.raises(LockedError) as info, run_lock(tmp_path / "d", "store", owner=True):
            pytest.fail("entered a directory another process holds")
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "d") in message
        assert f"this store is in use by pid {holder.pid} on host {HOST} since " in message
        assert "lock_holder.py" in message  # the holder's command line
        assert active_holder(tmp_path / "d").pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_never_leaves_the_directory_locked(tmp_path):
    holder = hold_lock(tmp_path / "d", 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(tmp_path / "d").pid == holder.pid  # the file stays behind, naming the dead holder
    assert active_holder(tmp_path / "d") is None
    with run_lock(tmp_path / "d", "store", owner=True):  # ... but it is not a lock
        assert read_holder(tmp_path / "d").pid == os.getpid()
    assert (tmp_path / "d" / LOCK_FILE).read_text() == ""  # a clean exit forgets the holder


def test_the_lock_is_reentrant_in_one_process_and_free_after(tmp_path):
    with run_lock(tmp_path / "d", "training run", owner=True):
        with run_lock(tmp_path / "d", "training run", owner=True):
            pass
        assert read_holder(tmp_path / "d").pid == os.getpid()  # still held after the inner block
        other = subprocess.run([sys.executable, str(HELPERS / "lock_holder.py"), str(tmp_path / "d"), "0"],
                               capture_output=True, text=True, env=env_for_children(), timeout=60)
        assert other.returncode != 0 and "LockedError" in other.stderr
    again = subprocess.run([sys.executable, str(HELPERS / "lock_holder.py"), str(tmp_path / "d"), "0"],
                           capture_output=True, text=True, env=env_for_children(), timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "locked"


def release_when_waiting(proc: subprocess.Popen, go: Path, timeout: float = 300) -> list[str]:
    """Read ``proc``'s stderr until it says it is waiting, then let the holder go (create ``go``)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"ended without waiting: {''.join(lines)[-3000:]}"
        lines.append(line)
        if line.startswith("waiting: "):
            go.touch()
            return lines
    raise AssertionError("never waited")


def test_wait_enters_only_after_the_holder_lets_go(tmp_path):
    marker, go = tmp_path / "released", tmp_path / "go"
    holder = hold_lock(tmp_path / "d", f"until={go}", marker)
    script = (f"from wealy_cli.core.lock import run_lock\nfrom pathlib import Path\n"
              f"with run_lock(Path({str(tmp_path / 'd')!r}), 'cache', owner=True, wait=True, poll=0.05):\n"
              f"    print(Path({str(marker)!r}).exists())\n")
    waiter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env_for_children())
    said = release_when_waiting(waiter, go)
    assert f"is in use by pid {holder.pid} on host {HOST}" in said[-1]
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out.strip() == "True"
    assert holder.wait(30) == 0


def test_worker_ranks_do_not_take_the_lock(tmp_path, monkeypatch):
    """Ranks started by a launcher (LOCAL_RANK, RANK, NODE_RANK, SLURM_PROCID not 0) write under
    the lock their rank 0 holds: they pass through."""
    holder = hold_lock(tmp_path / "d", 60)
    try:
        assert is_launcher()
        for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
            with monkeypatch.context() as env:
                env.setenv(name, "1")
                assert not is_launcher()
                with run_lock(tmp_path / "d", "store"):
                    pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(LockedError):
            with run_lock(tmp_path / "d", "store"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_fabric_ranks_wait_together_for_the_lock(tmp_path):
    """Two real Fabric ranks (gloo, CPU) enter with ``agree``: none enters before rank 0 holds the
    lock, which another process holds first."""
    marker, go = tmp_path / "released", tmp_path / "go"
    holder = hold_lock(tmp_path / "d", f"until={go}", marker)
    script = f"""
import sys, time
from pathlib import Path
from lightning.fabric import Fabric
from wealy_cli.core.lock import run_lock, read_holder
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
rank = fabric.global_rank
with run_lock(Path({str(tmp_path / "d")!r}), "cache", wait=True, owner=rank == 0, poll=0.1,
              agree=lambda ok: bool(fabric.broadcast(ok, src=0))):
    released = Path({str(marker)!r}).exists()
    holder = read_holder(Path({str(tmp_path / "d")!r}))
    fabric.barrier()
    print(f"rank {{rank}} entered released={{released}} holder={{holder.pid}}", flush=True)
    fabric.barrier()  # rank 0 leaves (taking the process group's store with it) only after both printed
"""
    (tmp_path / "ranks.py").write_text(script)
    env = {**env_for_children(), "MASTER_PORT": str(20000 + os.getpid() % 20000), "OMP_NUM_THREADS": "1"}
    ranks = subprocess.Popen([sys.executable, str(tmp_path / "ranks.py")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    release_when_waiting(ranks, go)  # rank 0 says so after the ranks agreed that it has no lock yet
    out, err = ranks.communicate(timeout=300)
    assert holder.wait(30) == 0
    assert ranks.returncode == 0, err[-3000:]
    # Found anywhere in the output: another process's message (Lightning's, the other rank's) may
    # share a line with it.
    entered = sorted(re.findall(r"rank (\d) entered released=(\w+) holder=(\d+)", out))
    assert [(rank, released) for rank, released, _ in entered] == [("0", "True"), ("1", "True")], out + err
    holders = {int(pid) for _, _, pid in entered}
    assert len(holders) == 1 and holder.pid not in holders  # both saw rank 0 holding it


# ---------------------------------------------------------------- extract whisper

# The case in small: "--split all --limit 3" and "--split test --limit 2" share fire/a.
# (A split keeps cliques of two versions or more.)
SONGS = [("river", "a", "river.mp3", "train"), ("river", "b", "tiny.wav", "train"),
         ("fire", "a", "fire.ogg", "test"), ("fire", "b", "fox.mp3", "test")]
ALL_3, TEST_2 = {"river/a", "river/b", "fire/a"}, {"fire/a", "fire/b"}


@pytest.fixture(scope="module")
def songs_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("songs") / "songs.csv"
    path.write_text("clique,version,path,split\n" + "".join(f"{c},{v},{AUDIO / f},{s}\n" for c, v, f, s in SONGS))
    return path


def extract(csv: Path, store: Path, split: str, limit: int) -> subprocess.Popen:
    return wealy_process("extract", "whisper", "--dataset", "csv", "--metadata", csv, "--split", split,
                         "--limit", limit, "-o", store)


def shard_key_counts(store: Path) -> Counter:
    """Keys of every shard file, read directly (not through Store, which hides duplicates)."""
    counts: Counter = Counter()
    for path in (store / "shards").glob("*.h5"):
        with h5py.File(path, "r") as h5:
            counts.update(h5["keys"].asstr()[...])
    return counts


def stored_now(stdout: str) -> int:
    return int(re.search(r"stored now\s*│\s*(\d+)", stdout)[1])


def assert_verify_clean(store: Path) -> None:
    verify = run_wealy("store", "verify", store)
    assert verify.returncode == 0 and "no problems found" in verify.stdout, verify.stdout + verify.stderr


def test_two_extractions_started_together_store_the_union_or_refuse(songs_csv, tmp_path):
    store = tmp_path / "store"
    runs = {"all": (extract(songs_csv, store, "all", 3), ALL_3), "test": (extract(songs_csv, store, "test", 2), TEST_2)}
    results = {name: (proc, *proc.communicate(timeout=600), keys) for name, (proc, keys) in runs.items()}
    codes = sorted(proc.returncode for proc, *_ in results.values())
    assert codes in ([0, 0], [0, 2]), {n: r[2][-2000:] for n, r in results.items()}
    stored = set()
    for name, (proc, out, err, keys) in results.items():
        other = results["test" if name == "all" else "all"][0]
        if proc.returncode == 2:  # refused at once: names the other run, wrote nothing
            assert_one_line_naming(err, other.pid)
            assert out == ""
        else:
            stored |= keys
    counts = shard_key_counts(store)
    assert set(counts) == stored and set(counts.values()) == {1}
    # reported = stored: what the runs said they stored now is what the store holds
    assert sum(stored_now(out) for proc, out, _, _ in results.values() if proc.returncode == 0) == len(counts)
    assert_verify_clean(store)
    if codes == [0, 2]:  # the refused run, run again, adds only its missing keys: the union
        refused = next(name for name, r in results.items() if r[0].returncode == 2)
        again = extract(songs_csv, store, refused, 3 if refused == "all" else 2)
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0, err[-2000:]
        assert stored_now(out) == len(results[refused][3] - stored)
    counts = shard_key_counts(store)
    assert set(counts) == ALL_3 | TEST_2 and set(counts.values()) == {1}
    assert_verify_clean(store)


def test_a_second_extraction_while_one_runs_is_refused_and_stores_nothing(songs_csv, tmp_path):
    store = tmp_path / "store"
    first = extract(songs_csv, store, "all", 3)
    try:
        wait_for_holder(store, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # keep it mid-run, whatever the machine's speed
        second = run_wealy("extract", "whisper", "--dataset", "csv", "--metadata", songs_csv, "--split", "test",
                           "--limit", 2, "-o", store)
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2 and second.stdout == ""
        assert_one_line_naming(second.stderr, first.pid)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-2000:]
    assert stored_now(out) == 3
    counts = shard_key_counts(store)
    assert set(counts) == ALL_3 and set(counts.values()) == {1}
    assert_verify_clean(store)


def test_a_killed_extraction_never_blocks_the_next(songs_csv, tmp_path):
    store = tmp_path / "store"
    first = extract(songs_csv, store, "all", 4)
    wait_for_holder(store, first.pid, first)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert active_holder(store) is None and read_holder(store).pid == first.pid  # a stale file, no lock
    second = extract(songs_csv, store, "all", 4)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    counts = shard_key_counts(store)
    assert set(counts) == ALL_3 | TEST_2 and set(counts.values()) == {1}
    assert stored_now(out) == 4
    assert_verify_clean(store)


# ---------------------------------------------------------------- train


def test_a_second_training_run_on_one_output_is_refused_and_the_first_is_intact(tmp_path):
    from helpers.training import build_separable, read_state_retrying, train_args

    from wealy_cli.model.network import load_model
    from wealy_cli.model.training import STATE

    store_dir, csv_path = build_separable(tmp_path, train_cliques=16, val_cliques=4)
    out = tmp_path / "run"
    first = wealy_process(*train_args(store_dir, csv_path, out, "--batch-size", "8", "--max-epochs", "12"))
    try:
        wait_for_holder(out, first.pid, first)
        deadline = time.monotonic() + 300
        while not ((out / STATE).exists() and read_state_retrying(out / STATE)["epoch"] >= 1):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # mid-run, with checkpoints on disk
        # a restart in a second terminal (--resume), and a fresh run on the same --output
        second = [run_wealy(*train_args(store_dir, csv_path, out, "--batch-size", "8", "--max-epochs", "12", *extra))
                  for extra in (["--resume"], [])]
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    for refused in second:
        assert refused.returncode == 2
        assert_one_line_naming(refused.stderr, first.pid)
        assert "training run is in use" in refused.stderr
    assert first.returncode == 0, err[-2000:]
    with open(out / "metrics.csv", newline="") as fh:
        epochs = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert epochs == list(range(13))  # every epoch once, in order: nothing interleaved
    state = torch.load(out / STATE, weights_only=True)
    assert state["epoch"] == 12 and state["step"] == 12 * (32 // 8)
    assert [row["epoch"] for row in state["history"]] == list(range(13))
    for name in ("last", "best"):
        load_model(out / f"{name}.safetensors")
    assert json.loads((out / "last.config.json").read_text())["epoch"] == 12
    assert not list(out.glob(".*.tmp"))


# ---------------------------------------------------------------- evaluate: the chunk-embedding cache


def test_evaluations_sharing_a_cache_wait_for_each_other(eval_setup, tmp_path):
    """Two evaluations at once on one --cache: both succeed with the same numbers, and the cache
    holds every song once. A held cache makes an evaluation (1 or 2 Fabric ranks) wait, not fail."""
    from helpers.evaluation import common

    root = eval_setup[0]
    cache = tmp_path / "cache"
    procs = [wealy_process("evaluate", *common(root), "--topk", "3", "--output", tmp_path / f"run{i}",
                           "--cache", cache) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    metrics = [json.loads((tmp_path / f"run{i}" / "results.json").read_text())["metrics"] for i in range(2)]
    assert metrics[0] == metrics[1] and metrics[0]["n_queries"] == 30
    (cache_dir,) = cache.iterdir()
    counts = shard_key_counts(cache_dir)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert_verify_clean(cache_dir)

    for ranks in ("1", "2"):
        go = tmp_path / f"go{ranks}"
        holder = hold_lock(cache_dir, f"until={go}")
        waiting = wealy_process("evaluate", *common(root), "--topk", "3", "--output", tmp_path / f"held{ranks}",
                                "--cache", cache, "--gpus", "0", "--workers", ranks)
        said = release_when_waiting(waiting, go)
        assert f"is in use by pid {holder.pid} on host {HOST}" in said[-1]
        _, err = waiting.communicate(timeout=600)
        assert holder.wait(30) == 0
        assert waiting.returncode == 0, err[-3000:]
        assert json.loads((tmp_path / f"held{ranks}" / "results.json").read_text())["metrics"] == metrics[0]
    assert set(shard_key_counts(cache_dir).values()) == {1}
