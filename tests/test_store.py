"""The sharded HDF5 store: exact round trip, resume, concurrent writers, crash safety, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from wealy_cli.core.store import Store, StoreError, StoreWriter, store_info, verify_store

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from store_writer import item  # noqa: E402

CHILD = Path(__file__).parent / "helpers" / "store_writer.py"


def all_shard_keys(directory: Path) -> Counter:
    """Count keys by reading every shard file directly (independent of Store's index)."""
    counts: Counter = Counter()
    for path in (directory / "shards").glob("*.h5"):
        with h5py.File(path, "r") as h5:
            counts.update(h5["keys"].asstr()[...])
    return counts


def child(store: Path, writer: str, n: int, delay: float = 0.0, every: int = 1, offset: int = 0,
          lock: bool = False):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, str(CHILD), str(store), writer, str(n), str(delay),
                             str(every), str(offset), *(["--lock"] if lock else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_fp16_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    items = {f"c{i % 3}/v{i}": rng.standard_normal((rng.integers(1, 50), 32)).astype(np.float16)
             for i in range(20)}
    items["c0/big"] = np.array([[65504.0, -65504.0, 6e-8, 0.0] * 8], dtype=np.float16)
    with StoreWriter(tmp_path / "s", 32, settings={"a": 1}, shard_items=6) as w:
        for key, arr in items.items():
            w.add(key, arr, text=f"text of {key}", language="en")
    store = Store(tmp_path / "s")
    assert len(store) == len(items) and store.dim == 32
    for key, arr in items.items():
        got = store[key]
        assert got.dtype == np.float16
        assert got.tobytes() == arr.tobytes()
        assert store.attrs(key)["text"] == f"text of {key}"
    assert store.read("c0/v0", 1, 3).tobytes() == items["c0/v0"][1:3].tobytes()
    assert sorted(k for k, _, _ in store.items()) == sorted(items)
    info = store_info(store)
    rows = [a.shape[0] for a in items.values()]
    assert info["rows max"] == max(rows) and info["rows total"] == sum(rows)


def test_empty_item_and_wrong_shape(tmp_path):
    with StoreWriter(tmp_path / "s", 4) as w:
        w.add("a/1", np.zeros((0, 4)))
        with pytest.raises(StoreError, match="expected shape"):
            w.add("a/2", np.zeros((3, 5)))
        with pytest.raises(StoreError, match="already stored"):
            w.add("a/1", np.zeros((1, 4)))
    assert Store(tmp_path / "s")["a/1"].shape == (0, 4)


def test_resume_writes_each_key_once(tmp_path):
    store = tmp_path / "s"
    for _ in range(3):  # the same job three times: only the first one writes
        assert child(store, "w0", 30).wait(60) == 0
    counts = all_shard_keys(store)
    assert len(counts) == 30 and set(counts.values()) == {1}


def test_other_settings_are_refused(tmp_path):
    StoreWriter(tmp_path / "s", 8, settings={"model": "a"}).close()
    with pytest.raises(StoreError, match="other settings"):
        StoreWriter(tmp_path / "s", 8, settings={"model": "b"})


def test_two_writer_processes_at_once(tmp_path):
    store = tmp_path / "s"
    procs = [child(store, f"w{r}", 40, 0.005, 2, r) for r in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    counts = all_shard_keys(store)
    assert len(counts) == 40 and set(counts.values()) == {1}
    s = Store(store)
    for i in range(40):
        assert s[f"{i % 10}/{i}"].tobytes() == item(i).tobytes()
    assert verify_store(store).ok


def test_writers_sharing_a_name_never_replace_each_others_shards(tmp_path):
    """Two writers named w0 on one store (two runs, or two hosts): each shard gets its own number.
    Before shard numbers were claimed, the second w0-00000.h5 replaced the first."""
    store = tmp_path / "s"
    first = StoreWriter(store, 4, writer="w0", shard_items=2)
    second = StoreWriter(store, 4, writer="w0", shard_items=2)  # opened before any shard exists
    for i in range(4):
        first.add(f"a/{i}", np.full((1, 4), i))
        second.add(f"b/{i}", np.full((2, 4), -i))
    first.close()
    second.close()
    names = sorted(p.name for p in (store / "shards").glob("*.h5"))
    assert names == [f"w0-{n:05d}.h5" for n in range(4)]
    counts = all_shard_keys(store)
    assert set(counts) == {f"a/{i}" for i in range(4)} | {f"b/{i}" for i in range(4)}
    assert set(counts.values()) == {1}
    s = Store(store)
    assert [float(s[f"a/{i}"][0, 0]) for i in range(4)] == [0, 1, 2, 3]
    assert [float(s[f"b/{i}"][1, 3]) for i in range(4)] == [0, -1, -2, -3]
    assert verify_store(store).ok


def test_two_processes_with_one_writer_name_lose_nothing(tmp_path):
    store = tmp_path / "s"
    procs = [child(store, "w0", 80, 0.002, 2, r) for r in range(2)]  # same name, disjoint keys
    assert [p.wait(60) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    counts = all_shard_keys(store)
    assert len(counts) == 80 and set(counts.values()) == {1}
    assert len(list((store / "shards").glob("w0-*.h5"))) == 20  # 40 keys each, 4 per shard
    s = Store(store)
    for i in range(80):
        assert s[f"{i % 10}/{i}"].tobytes() == item(i).tobytes()
    assert verify_store(store).ok and not list((store / "shards").glob(".*"))


def test_a_claim_left_by_a_crash_is_skipped(tmp_path):
    store = tmp_path / "s"
    (store / "shards").mkdir(parents=True)
    (store / "shards" / ".w0-00000.h5.claim").touch()  # killed between claim and rename
    with StoreWriter(store, 4, shard_items=1) as w:
        w.add("a/1", np.ones((1, 4)))
        w.add("a/2", np.ones((1, 4)))
    assert sorted(p.name for p in (store / "shards").glob("*.h5")) == ["w0-00001.h5", "w0-00002.h5"]
    report = verify_store(store)
    assert report.ok and len(Store(store)) == 2
    assert any(".w0-00000.h5.claim" in w for w in report.warnings)


def test_sigkill_of_a_locked_writer_then_the_next_run_resumes(tmp_path):
    """A writer holding the run lock is killed: the next locked run is not blocked and only adds
    what is missing (each key once)."""
    store = tmp_path / "s"
    proc = child(store, "w0", 200, delay=0.02, lock=True)
    deadline = time.time() + 60
    while len(list((store / "shards").glob("w0-*.h5"))) < 3:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((store / ".wealy.lock").read_text())["pid"] == proc.pid  # left behind, not a lock
    before = all_shard_keys(store)
    resumed = child(store, "w0", 200, lock=True)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    added = [line.split()[1] for line in out.splitlines()]
    assert sorted(added) == sorted(set(f"{i % 10}/{i}" for i in range(200)) - set(before))
    after = all_shard_keys(store)
    assert len(after) == 200 and set(after.values()) == {1}
    assert verify_store(store).ok


def test_sigkill_mid_run_then_resume(tmp_path):
    store = tmp_path / "s"
    proc = child(store, "w0", 200, delay=0.02)
    deadline = time.time() + 60
    while len(list((store / "shards").glob("w0-*.h5"))) < 3:  # wait for a few finished shards
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = all_shard_keys(store)
    report = verify_store(store)
    assert report.ok, report.problems
    assert 0 < len(before) < 200 and set(before.values()) == {1}
    s = Store(store)
    for key in before:
        i = int(key.split("/")[1])
        assert s[key].tobytes() == item(i).tobytes()
    assert child(store, "w0", 200).wait(120) == 0
    after = all_shard_keys(store)
    assert len(after) == 200 and set(after.values()) == {1}
    assert verify_store(store).ok


def test_verify_catches_corruption_and_duplicates(tmp_path):
    store = tmp_path / "s"
    with StoreWriter(store, 8, shard_items=2) as w:
        for i in range(6):
            w.add(f"c/{i}", np.ones((3, 8)))
    assert verify_store(store).ok
    shards = sorted((store / "shards").glob("*.h5"))
    # a duplicate key: copy a shard under another writer's name
    (store / "shards" / "w9-00000.h5").write_bytes(shards[0].read_bytes())
    report = verify_store(store)
    assert any("duplicate key 'c/0'" in p for p in report.problems)
    (store / "shards" / "w9-00000.h5").unlink()
    # NaN inside an item
    with h5py.File(shards[1], "r+") as h5:
        h5["data"][4, 2] = np.nan
    report = verify_store(store)
    assert any("'c/3' holds NaN" in p for p in report.problems)
    # a truncated shard file
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])
    report = verify_store(store)
    assert any(shards[2].name in p and "cannot be read" in p for p in report.problems)


def test_failures_are_listed_until_produced(tmp_path):
    with StoreWriter(tmp_path / "s", 4) as w:
        w.fail("a/1", "audio file not found")
        w.fail("a/2", "not audio")
        w.add("a/2", np.zeros((1, 4)))  # retried successfully later
    failures = Store(tmp_path / "s").failures()
    assert list(failures) == ["a/1"] and failures["a/1"]["reason"] == "audio file not found"


def test_store_in_dataloader_workers(tmp_path):
    import torch
    from torch.utils.data import DataLoader, Dataset

    with StoreWriter(tmp_path / "s", 4, shard_items=3) as w:
        for i in range(12):
            w.add(f"c/{i}", np.full((2, 4), i))
    store = Store(tmp_path / "s")
    _ = store["c/0"]  # open a handle in the parent before forking

    class Items(Dataset):
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            return torch.from_numpy(store[f"c/{i}"].astype(np.float32))

    got = torch.cat(list(DataLoader(Items(), batch_size=3, num_workers=2)))
    assert torch.equal(got[:, 0, 0], torch.arange(12, dtype=torch.float32))
