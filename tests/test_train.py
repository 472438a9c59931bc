"""Training: learning on a separable synthetic store, 2-process DDP with gather, SIGKILL + resume."""

from __future__ import annotations

import csv
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
from helpers.cli import REPO, run_wealy, run_wealy_process
from helpers.training import TINY_CFG, build_separable, read_state_retrying, train_args

from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.lock import read_holder
from wealy_cli.core.store import Store
from wealy_cli.model.network import load_model
from wealy_cli.model.options import TrainRun
from wealy_cli.model.training import STATE, lr_at, plan_epoch, rank_batches, train

torch.set_num_threads(1)

def recipe(store_dir: Path, output: Path, **options) -> TrainRun:
    """A training run on the CPU, one process, the tiny model; ``options`` override."""
    return TrainRun(**{"store": store_dir, "output": output, "gpus": 0, "loader_workers": 0, **TINY_CFG, **options})


def splits(store_dir: Path, csv_path: Path):
    store = Store(store_dir)
    train_split = load_split("csv", "train", csv_path, check_audio=False).restrict(store.keys())
    val_split = load_split("csv", "val", csv_path, check_audio=False).restrict(store.keys())
    return store, train_split, val_split


def brute_force_map(z: np.ndarray, cliques: list[str]) -> float:
    """Mean AP with a full sort per query (self excluded, ties by index)."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return brute_force_map_of(1 - z @ z.T, cliques)


def brute_force_map_of(distances: np.ndarray, cliques: list[str]) -> float:
    aps = []
    for q in range(len(distances)):
        order = [j for j in np.argsort(distances[q], kind="stable") if j != q]
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if cliques[j] == cliques[q]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return float(np.mean(aps))


def test_learning_lifts_validation_map_from_chance(tmp_path):
    store_dir, csv_path = build_separable(tmp_path)
    store, train_split, val_split = splits(store_dir, csv_path)
    opts = recipe(store_dir, tmp_path / "run", dropout=0.0, batch_size=16, chunk=16, max_epochs=8, warmup_epochs=1,
                  lr=5e-3, val_mode="first")
    result = train(opts, store, train_split, val_split)
    maps = [row["val_map"] for row in result.history]
    assert maps[0] < 0.5  # untrained: near chance (1 relevant among 23)
    assert result.best_map >= 0.9, maps
    assert result.epochs == 8 and len(result.history) == 9
    # The best checkpoint, reloaded, gives the recorded MAP by an independent computation.
    model, cfg = load_model(tmp_path / "run")
    with torch.no_grad():
        z = torch.cat([model(torch.from_numpy(store.read(k, 0, 16).astype(np.float32))[None])
                       for k in val_split.keys]).numpy()
    assert brute_force_map(z, val_split.cliques) == pytest.approx(result.best_map, abs=1e-6)
    meta = json.loads((tmp_path / "run" / "best.config.json").read_text())
    assert meta["epoch"] == result.best_epoch and meta["val_map"] == pytest.approx(result.best_map)
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(9))
    assert float(rows[-1]["val_map"]) == pytest.approx(maps[-1])
    # A second run into the same directory must not clobber it silently.
    with pytest.raises(UserError, match="--resume"):
        train(opts, store, train_split, val_split)


def test_validation_scores_every_chunk_as_evaluate_does(tmp_path):
    """--val-mode evaluate (the default): each validation song is cut into overlapping chunks and
    song distance = the smallest chunk-pair distance; the recorded MAP equals a by-hand computation
    with the saved checkpoint (chunks cut here, not by the library)."""
    store_dir, csv_path = build_separable(tmp_path, train_cliques=8, val_cliques=6)
    store, train_split, val_split = splits(store_dir, csv_path)
    opts = recipe(store_dir, tmp_path / "run", dropout=0.0, batch_size=8, chunk=8, max_epochs=1, warmup_epochs=0,
                  lr=1e-3, val_overlap=0.5)
    result = train(opts, store, train_split, val_split)
    model, _ = load_model(tmp_path / "run" / "last")
    songs = []
    with torch.no_grad():
        for key in val_split.keys:
            rows = torch.from_numpy(store.read(key).astype(np.float32))
            starts = list(range(0, len(rows) - 8 + 1, 4)) if len(rows) > 8 else [0]
            if len(rows) > 8 and starts[-1] + 8 < len(rows):
                starts.append(len(rows) - 8)  # the tail-aligned last chunk
            z = torch.cat([model(rows[s:s + 8][None]) for s in starts]).numpy()
            songs.append(z / np.linalg.norm(z, axis=1, keepdims=True))
    assert any(len(s) > 1 for s in songs)  # the case that differs from first-chunk validation
    distances = np.array([[1 - (a @ b.T).max() for b in songs] for a in songs])
    assert result.history[-1]["val_map"] == pytest.approx(brute_force_map_of(distances, val_split.cliques), abs=1e-6)


def test_separation_by_hand_breaks_ties_of_equal_map():
    from wealy_cli.model.training import separation

    # a, a2 one clique, b alone (no relevant candidate: skipped); rows = queries.
    d = np.array([[0.0, 0.2, 0.9],
                  [0.4, 0.0, 0.5],
                  [0.3, 0.1, 0.0]])
    # a: 0.9 - 0.2 = 0.7; a2: 0.5 - 0.4 = 0.1; mean 0.4
    assert separation(d, ["a", "a", "b"]) == pytest.approx(0.4)


def test_sampling_is_deterministic_and_partitions_global_batches(tmp_path):
    _, train_split, _ = splits(*build_separable(tmp_path, train_cliques=10, val_cliques=2, versions=3))
    items = plan_epoch(train_split, 3, seed=5, epoch=2)
    assert items == plan_epoch(train_split, 3, seed=5, epoch=2)
    assert items != plan_epoch(train_split, 3, seed=5, epoch=3)
    assert sorted(it.ids[0] for it in items) == list(range(len(train_split)))  # every version once
    for it in items:  # anchor + 2 distinct others of its clique
        cliques = {train_split.versions[i].clique for i in it.ids}
        assert len(cliques) == 1 and len(set(it.ids)) == 3
    one = rank_batches(items, 8, 1, 0)
    two = [rank_batches(items, 4, 2, r) for r in range(2)]
    assert one[:8] == two[0][:4] + two[1][:4]  # global batch 0, split over 2 ranks
    assert len(one) == 24 and len(two[0]) == 12  # 30 items → 3 complete global batches of 8


def test_lr_schedule_warmup_then_cosine():
    opts = TrainRun.model_construct(lr=1e-4, warmup_epochs=50, max_epochs=1000)
    assert lr_at(0, opts) == pytest.approx(2e-6)
    assert lr_at(49, opts) == pytest.approx(1e-4)
    assert lr_at(50, opts) == pytest.approx(1e-4)
    assert lr_at(525, opts) == pytest.approx(0.5e-4)
    assert lr_at(999, opts) < 1e-6  # the run stops there


def test_bad_batch_size_is_a_user_error(tmp_path):
    store_dir, csv_path = build_separable(tmp_path, train_cliques=3, val_cliques=2)
    store, train_split, val_split = splits(store_dir, csv_path)
    opts = recipe(store_dir, tmp_path / "run", batch_size=64)
    with pytest.raises(UserError, match="--batch-size"):
        train(opts, store, train_split, val_split)


@pytest.mark.slow
def test_two_process_gather_equals_single_process(tmp_path):
    """2 CPU processes (Fabric DDP, gloo), batch 8 each, vs 1 process, batch 16: same global
    batches, so the same loss, the same gradients (Adam moments) and the same weights."""
    store_dir, csv_path = build_separable(tmp_path, train_cliques=32, val_cliques=6)
    store, train_split, val_split = splits(store_dir, csv_path)
    common = ["--dropout", "0", "--max-epochs", "2", "--limit-batches", "2"]
    env = {"OMP_NUM_THREADS": "1", "MASTER_PORT": str(20000 + os.getpid() % 20000)}
    ddp = run_wealy_process(*train_args(store_dir, csv_path, tmp_path / "ddp", *common, "--batch-size", "8",
                                       "--workers", "2"), env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = recipe(store_dir, tmp_path / "single", dropout=0.0, batch_size=16, chunk=16, max_epochs=2,
                    limit_batches=2, warmup_epochs=1, lr=3e-3)
    result = train(single, store, train_split, val_split)
    a = torch.load(tmp_path / "single" / STATE, weights_only=True)
    b = torch.load(tmp_path / "ddp" / STATE, weights_only=True)
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert b["step"] == a["step"] == 4
    losses_a = [row["train_loss"] for row in result.history[1:]]
    losses_b = [row["train_loss"] for row in b["history"][1:]]
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-4)
    for pid, moments in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):  # not scale-invariant: checks the gradient itself
            torch.testing.assert_close(b["optimizer"]["state"][pid][name], moments[name], rtol=2e-3, atol=1e-7)
    for name, weights in a["model"].items():
        other = b["model"][name]
        if name.endswith("self_attn.in_proj_bias"):
            # The key bias has a zero gradient in exact arithmetic (softmax ignores a shift);
            # Adam turns its rounding noise into full-size steps, so compare q and v parts only.
            keep = torch.ones_like(weights, dtype=torch.bool)
            keep[32:64] = False
            weights, other = weights[keep], other[keep]
        torch.testing.assert_close(other, weights, rtol=1e-3, atol=1e-5)
    # Per-device loss (the original's behaviour) is a different number: the gather matters.
    from wealy_cli.model.losses import ntxent_loss
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(16, 4, generator=g), torch.arange(8).repeat_interleave(2)
    halves = (ntxent_loss(z[:8], labels[:8], torch.arange(8)) + ntxent_loss(z[8:], labels[8:], torch.arange(8, 16))) / 2
    assert abs(halves.item() - ntxent_loss(z, labels, torch.arange(16)).item()) > 1e-3


@pytest.mark.slow
def test_sigkill_then_resume_continues(tmp_path):
    store_dir, csv_path = build_separable(tmp_path, train_cliques=48, val_cliques=6)
    out = tmp_path / "run"
    args = train_args(store_dir, csv_path, out, "--batch-size", "8", "--max-epochs", "400")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    child = subprocess.Popen([sys.executable, "-m", "wealy_cli", *map(str, args)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if (out / STATE).exists() and (out / "last.safetensors").exists():
                state = read_state_retrying(out / STATE)
                if state["epoch"] >= 2:
                    break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert read_holder(out).pid == child.pid  # its lock file stays behind; the kill freed the lock
    before = torch.load(out / STATE, weights_only=True)
    for name in ("last", "best"):  # whatever the kill interrupted, the visible files are whole
        load_model(out / f"{name}.safetensors")
    killed_at = before["epoch"]

    target = killed_at + 2
    resumed = run_wealy(*train_args(store_dir, csv_path, out, "--batch-size", "8", "--max-epochs", str(target),
                                   "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = torch.load(out / STATE, weights_only=True)
    steps_per_epoch = 96 // 8
    assert after["epoch"] == target
    assert after["step"] == before["step"] + 2 * steps_per_epoch == target * steps_per_epoch
    adam_steps = {float(s["step"]) for s in after["optimizer"]["state"].values()}
    assert adam_steps == {float(target * steps_per_epoch)}  # optimizer state continued, not restarted
    assert after["best_map"] >= before["best_map"]
    with open(out / "metrics.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == list(range(target + 1))
    best_meta = json.loads((out / "best.config.json").read_text())
    assert best_meta["val_map"] == pytest.approx(after["best_map"])
    for name in ("last", "best"):
        load_model(out / name)
    assert not list(out.glob(".*.tmp"))


def test_stopping_rules(tmp_path):
    store_dir, csv_path = build_separable(tmp_path, train_cliques=16, val_cliques=4)
    store, train_split, val_split = splits(store_dir, csv_path)
    base = dict(dropout=0.0, batch_size=8, chunk=16, max_epochs=5)
    # An lr of 1e-15 moves no float32 weight, so the val MAP of epoch 0 is never beaten: patience 2
    # stops after epoch 2. (Also reads the store from a DataLoader worker process.)
    frozen = train(recipe(store_dir, tmp_path / "a", lr=1e-15, min_lr=0.0, warmup_epochs=0, patience=2,
                          loader_workers=1, **base), store, train_split, val_split)
    assert (frozen.epochs, frozen.best_epoch) == (2, 0) and "no improvement" in frozen.stop_reason
    # After the warm-up, an lr below min_lr ends the run.
    low = train(recipe(store_dir, tmp_path / "b", lr=1e-3, min_lr=1.0, warmup_epochs=1, **base),
                store, train_split, val_split)
    assert low.epochs == 1 and low.stop_reason == "lr below min_lr"
    # A time limit already spent: the unfinished epoch is discarded, epoch 0 stays the last state.
    late = train(recipe(store_dir, tmp_path / "c", time_limit=1e-9, **base), store, train_split, val_split)
    assert late.epochs == 0 and late.stop_reason.startswith("time limit")
    assert torch.load(tmp_path / "c" / STATE, weights_only=True)["epoch"] == 0


def _windowed_store(root: Path) -> Store:
    """One item of 3 Whisper windows (5, 7 and 4 rows; each window's first 2 rows are prompt rows),
    row r holding the value r in every dimension, so a view tells which rows it kept."""
    from wealy_cli.core.store import StoreWriter

    sizes, windows = (5, 7, 4), []
    for n in sizes:
        windows.append({"tokens": [50258, 50259] + list(range(100, 100 + n - 2)), "prompt_tokens": 2})
    rows = np.repeat(np.arange(sum(sizes), dtype=np.float16)[:, None], 4, axis=1)
    with StoreWriter(root / "w", 4, settings={"test": True}) as writer:
        writer.add("a/0", rows, clique="a", version="0", windows=windows)
    return Store(root / "w")


def _view(store: Store, seed: int, sung_only: bool = False, **views) -> np.ndarray:
    from wealy_cli.model.options import ViewOptions
    from wealy_cli.model.training import CropDataset, Item

    dataset = CropDataset(store, [Item(("a/0",), (0,), (0,), seed)], chunk=100, sung_only=sung_only,
                          views=ViewOptions(**views))
    return dataset[0][0][0]


def test_views_off_are_the_plain_item_and_every_lever_is_seeded(tmp_path):
    store = _windowed_store(tmp_path)
    assert _view(store, 1)[:, 0].tolist() == list(range(16))
    sung = [r for start, n in ((0, 5), (5, 7), (12, 4)) for r in range(start + 2, start + n)]
    assert _view(store, 1, sung_only=True)[:, 0].tolist() == sung
    for views in ({"crop_min": 0.3}, {"mask_share": 0.5}, {"drop_windows": 0.5}, {"noise": 0.1}):
        first = [_view(store, s, **views) for s in range(8)]
        assert all(np.array_equal(a, _view(store, s, **views)) for s, a in enumerate(first))  # seeded
        assert len({a.tobytes() for a in first}) > 1, views  # views differ between epochs


def test_mask_share_removes_one_contiguous_span_at_most_that_share(tmp_path):
    store = _windowed_store(tmp_path)
    for seed in range(20):
        kept = _view(store, seed, mask_share=0.5)[:, 0].astype(int).tolist()
        removed = sorted(set(range(16)) - set(kept))
        assert kept == sorted(kept) and len(removed) <= 8 and len(kept) >= 1
        assert removed == list(range(removed[0], removed[0] + len(removed))) if removed else True


def test_drop_windows_keeps_whole_windows_and_at_least_one(tmp_path):
    store = _windowed_store(tmp_path)
    windows = [set(range(0, 5)), set(range(5, 12)), set(range(12, 16))]
    seen = set()
    for seed in range(30):
        kept = set(_view(store, seed, drop_windows=0.7)[:, 0].astype(int).tolist())
        parts = [w for w in windows if w & kept]
        assert parts and all(w <= kept for w in parts) and kept == set().union(*parts)
        seen.add(len(parts))
    assert seen >= {1, 2}  # windows really are dropped, never all of them


def test_noise_scales_with_each_dimensions_spread(tmp_path):
    from wealy_cli.model.options import ViewOptions
    from wealy_cli.model.training import alter_view

    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((4000, 3)) * np.array([1.0, 10.0, 0.1])).astype(np.float32)
    out = alter_view(rows, ViewOptions(noise=0.2), np.random.default_rng(1))
    ratio = (out - rows).std(0) / rows.std(0)
    np.testing.assert_allclose(ratio, 0.2, rtol=0.05)
