"""Contrastive training of the WEALY model on a feature store, with Lightning Fabric.

Sampling. An epoch visits every training version once, in an order drawn from (seed, epoch).
Each visit is an *item*: the version plus ``per_clique - 1`` other versions of its clique, each
a random crop of ``chunk`` rows (shorter sequences are zero-padded and masked). A global batch
is ``batch_size × devices`` consecutive items; device r takes the r-th slice. Every draw
(order, companions, crops) comes from a generator seeded by (seed, epoch, position), so a run is
reproducible, and 1 device with batch 2B sees exactly the batches of 2 devices with batch B.

Gather. With ``gather`` on, each device all-gathers the embeddings of the global batch, puts
its own (with gradient) in its slot, and computes the loss of the whole global batch. That is
the single-process loss; backpropagating ``world_size × loss`` makes the DDP-averaged gradient
equal to the single-process gradient (each device contributes the part through its own rows).

Schedule (per epoch, as in the paper): linear warm-up to ``lr`` over ``warmup_epochs``, then
cosine decay to 0 at ``max_epochs``; training stops when the lr falls below ``min_lr``.

Run directory::

    settings.yaml          resolved settings (written by the command)
    metrics.csv            one row per epoch (epoch 0 = validation before training)
    last.safetensors/.config.json, best.* (best validation MAP)
    state.pt               model, optimizer, epoch, best metric, history: for --resume

Checkpoints are written to a temporary name, fsynced and renamed; ``state.pt`` is written last,
so after a kill the run resumes from the last complete epoch. Dropout RNGs are reseeded from
(seed, epoch, rank) at each epoch start, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wealy_cli.core import ui
from wealy_cli.core.datasets import DatasetSplit, load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.files import replace_atomically
from wealy_cli.core.launch import Workers, launch, resolve_devices
from wealy_cli.core.layers import pad_sequences
from wealy_cli.core.store import Store
from wealy_cli.model.losses import cosine_similarity_matrix, make_loss
from wealy_cli.model.network import ModelConfig, build_model, count_parameters, save_weights
from wealy_cli.model.options import TrainOptions, TrainRun, ViewOptions
from wealy_cli.ranking.late import late_similarity_rows
from wealy_cli.ranking.metrics import Metrics, comp, retrieval_metrics
from wealy_cli.ranking.options import EmbedOptions
from wealy_cli.whisper.lyrics import sung_features, sung_rows

STATE = "state.pt"
METRICS = "metrics.csv"


@dataclass
class TrainResult:
    epochs: int
    best_epoch: int
    best_map: float
    stop_reason: str
    history: list[dict[str, float]]
    rank: int = 0  # the process's global rank: only rank 0 reports


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    ids: tuple[int, ...]
    seed: int


def plan_epoch(split: DatasetSplit, per_clique: int, seed: int, epoch: int) -> list[Item]:
    """Every version once (shuffled), each with ``per_clique - 1`` other versions of its clique."""
    versions = split.versions
    clique_ids = {c: i for i, c in enumerate(sorted({v.clique for v in versions}))}
    members: dict[str, list[int]] = {}
    for i, v in enumerate(versions):
        members.setdefault(v.clique, []).append(i)
    rng = np.random.default_rng([seed, epoch])
    items = []
    for pos, i in enumerate(rng.permutation(len(versions))):
        others = [j for j in members[versions[i].clique] if j != i]
        picks = rng.choice(others, size=min(per_clique - 1, len(others)), replace=False)
        chosen = [int(i), *map(int, picks)]
        items.append(Item(tuple(versions[j].key for j in chosen),
                          tuple(clique_ids[versions[j].clique] for j in chosen),
                          tuple(chosen), seed * 1_000_003 + epoch * 100_003 + pos))
    return items


def read_rows(store: Store, key: str, sung_only: bool, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of an item: of all its rows, or of the rows of sung tokens only."""
    if not sung_only:
        return store.read(key, start, stop)
    return sung_features(store, key)[start:stop]


def row_count(store: Store, key: str, sung_only: bool) -> int:
    return int(sung_rows(store.attrs(key)).sum()) if sung_only else store.rows(key)


class CropDataset(Dataset):
    """Items → random ``chunk``-row crops read from the store (only those rows are read when the
    model takes every row; sung-token rows are selected from the whole item)."""

    def __init__(self, store: Store, items: list[Item], chunk: int, sung_only: bool = False,
                 views: ViewOptions | None = None) -> None:
        self.store, self.items, self.chunk, self.sung_only = store, items, chunk, sung_only
        self.views = views or ViewOptions()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[list[np.ndarray], list[int], list[int]]:
        item = self.items[index]
        rng = np.random.default_rng(item.seed)
        views = self.views
        rows = []
        for key in item.keys:
            if views.drop_windows > 0:  # whole item read, then windows dropped (seeded)
                whole = window_dropped_rows(self.store, key, self.sung_only, views.drop_windows, rng)
                n = len(whole)
            else:
                whole, n = None, row_count(self.store, key, self.sung_only)
            length = crop_length(n, self.chunk, views.crop_min, rng)
            start = int(rng.integers(0, n - length + 1)) if n > length else 0
            view = (whole[start:start + length] if whole is not None
                    else read_rows(self.store, key, self.sung_only, start, start + length))
            rows.append(alter_view(view, views, rng))
        return rows, list(item.labels), list(item.ids)


def window_dropped_rows(store: Store, key: str, sung_only: bool, p: float, rng: np.random.Generator) -> np.ndarray:
    """An item's rows (sung rows only with ``sung_only``) without the Whisper windows dropped,
    each with probability ``p``; one window is always kept."""
    attrs = store.attrs(key)
    windows = attrs.get("windows") or []
    keep_row = np.ones(store.rows(key), dtype=bool)
    if len(windows) > 1:
        keep = rng.random(len(windows)) >= p
        if not keep.any():
            keep[int(rng.integers(len(windows)))] = True
        sizes = [len(w["tokens"]) for w in windows]
        keep_row = np.repeat(keep, sizes) if sum(sizes) == len(keep_row) else keep_row
    if sung_only:
        keep_row &= sung_rows(attrs)
    return np.asarray(store[key])[keep_row]


def alter_view(rows: np.ndarray, views: ViewOptions, rng: np.random.Generator) -> np.ndarray:
    """A contiguous span of a random share ≤ ``mask_share`` of the rows removed, then Gaussian
    noise of ``noise`` × each dimension's spread added (no draw when both are off)."""
    if views.mask_share > 0 and len(rows) > 1:
        span = int(round(rng.uniform(0, views.mask_share) * len(rows)))
        span = min(span, len(rows) - 1)
        start = int(rng.integers(0, len(rows) - span + 1))
        rows = np.concatenate([rows[:start], rows[start + span:]])
    if views.noise > 0 and len(rows):
        spread = rows.astype(np.float32).std(0, keepdims=True) if len(rows) > 1 else np.abs(rows.astype(np.float32))
        rows = (rows + views.noise * spread * rng.standard_normal(rows.shape).astype(np.float32)).astype(rows.dtype)
    return rows


def crop_length(n: int, chunk: int, crop_min: float, rng: np.random.Generator) -> int:
    """Rows of one training view of an item of ``n`` rows: a random share in [crop_min, 1] of
    them (a song shorter than ``chunk`` is then not the same sequence every epoch), at most ``chunk``."""
    if crop_min >= 1.0 or n <= 1:
        return min(n, chunk)
    share = rng.uniform(crop_min, 1.0)
    return max(1, min(chunk, round(share * n)))


class FirstChunkDataset(Dataset):
    """Validation with ``--val-mode first``: the first ``chunk`` rows of each version."""

    def __init__(self, store: Store, keys: list[str], chunk: int, sung_only: bool = False) -> None:
        self.store, self.keys, self.chunk, self.sung_only = store, keys, chunk, sung_only

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[list[np.ndarray], list[int], list[int]]:
        return [read_rows(self.store, self.keys[index], self.sung_only, 0, self.chunk)], [0], [index]


def collate(batch: list[tuple[list[np.ndarray], list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence (at least one row): x (N, T, d) in the store's float16, mask (N, T).

    float16 until the device (:func:`model_input`): the stored values exactly, half the bytes
    through the loader processes and to the GPU, and 3-6x less collate time than float32 (a
    paper-size batch, 128 x 1500 x 1280, is 470 MB instead of 940 MB)."""
    x, mask = pad_sequences([s for rows, _, _ in batch for s in rows], min_length=1, dtype=torch.float16)
    labels = torch.tensor([label for _, ls, _ in batch for label in ls])
    ids = torch.tensor([i for _, _, ids in batch for i in ids])
    return {"x": x, "mask": mask, "labels": labels, "ids": ids}


def model_input(fabric: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, mask) of a collated batch on the device: stored float16 values, exactly."""
    return fabric.to_device(batch["x"]).float(), fabric.to_device(batch["mask"])


def rank_batches(items: list[Item], batch_size: int, world: int, rank: int, limit: int = 0) -> list[Item]:
    """This rank's items of every complete global batch, in order."""
    per_global = batch_size * world
    n_batches = len(items) // per_global
    if limit:
        n_batches = min(n_batches, limit)
    return [it for b in range(n_batches)
            for it in items[b * per_global + rank * batch_size: b * per_global + (rank + 1) * batch_size]]


# ---------------------------------------------------------------- schedule


def lr_at(epoch: int, opts: TrainOptions) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up, then cosine to 0 at max_epochs."""
    if epoch < opts.warmup_epochs:
        return opts.lr * (epoch + 1) / opts.warmup_epochs
    span = max(1, opts.max_epochs - opts.warmup_epochs)
    return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - opts.warmup_epochs) / span)))


# ---------------------------------------------------------------- distributed helpers


def gather_batch(fabric: Any, out: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global-batch outputs: gathered (detached) outputs of the other devices, own ones with
    grad. Row outputs (late interaction) are padded to the longest sequence of any device."""
    world = fabric.world_size
    if world == 1:
        return out, mask, labels, ids
    if out.dim() == 3:
        longest = int(fabric.all_reduce(torch.tensor(out.shape[1], device=out.device), reduce_op="max"))
        out = F.pad(out, (0, 0, 0, longest - out.shape[1]))
        mask = F.pad(mask, (0, longest - mask.shape[1]))
    all_out = fabric.all_gather(out.detach())
    parts = [out if r == fabric.global_rank else all_out[r] for r in range(world)]
    all_mask = fabric.all_gather(mask)
    return (torch.cat(parts), all_mask.flatten(0, 1), fabric.all_gather(labels).flatten(),
            fabric.all_gather(ids).flatten())


def batch_similarity(out: torch.Tensor, mask: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """The similarity matrix the loss sees: cosines of pooled embeddings, or late-interaction
    scores of row sets (the same score evaluation ranks by)."""
    if cfg.per_row:
        return late_similarity_rows(out.float(), mask, cfg.late_fraction)
    return cosine_similarity_matrix(out)


@torch.no_grad()
def embed_validation(fabric: Any, model: torch.nn.Module, store: Store, keys: list[str], chunk: int,
                     batch: int, workers: int, sung_only: bool = False) -> np.ndarray:
    """L2-normalised embeddings of the first chunk of every key (sharded over devices)."""
    world, rank = fabric.world_size, fabric.global_rank
    mine = list(range(rank, len(keys), world))
    loader = DataLoader(FirstChunkDataset(store, [keys[i] for i in mine], chunk, sung_only), batch_size=batch,
                        collate_fn=collate, num_workers=workers, pin_memory=fabric.device.type == "cuda")
    model.eval()
    out = []
    for b in loader:
        with fabric.autocast():
            z = model(*model_input(fabric, b))
        out.append(torch.nn.functional.normalize(z.float(), dim=-1))
    zdim = _plain(model).cfg.zdim
    local = torch.cat(out) if out else torch.zeros(0, zdim, device=fabric.device)
    if world == 1:
        return local.cpu().numpy()
    size = math.ceil(len(keys) / world)
    padded = torch.zeros(size, zdim, device=local.device)
    padded[: len(local)] = local
    gathered = fabric.all_gather(padded).cpu().numpy()  # (world, size, zdim)
    result = np.zeros((len(keys), zdim), np.float32)
    for r in range(world):
        n_r = len(range(r, len(keys), world))
        result[r::world] = gathered[r, :n_r]
    return result


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


@torch.no_grad()
def evaluation_distances(model: torch.nn.Module, store: Store, split: DatasetSplit, opts: TrainOptions,
                         batch: int, cfg: ModelConfig) -> np.ndarray:
    """Distances of the validation songs computed as ``wealy evaluate`` computes them (every
    process computes them all): a pooled model's songs cut into overlapping chunks (``--chunk``,
    ``--val-overlap``), song distance the mean of the ``--val-topk`` smallest chunk distances; a
    late-interaction model's every sung row, scored by late interaction. A song without rows gets
    one zero vector (distance 1 to every song)."""
    from wealy_cli.ranking.chunks import embed_rows
    from wealy_cli.ranking.tiles import SongSet, assemble_distances, song_distances

    plain = _plain(model)
    embed = EmbedOptions(chunk=opts.chunk, overlap=opts.val_overlap, topk=opts.val_topk, batch_size=batch)
    embedded = []
    for key in split.keys:
        z = embed_rows(plain, read_rows(store, key, cfg.text_rows), embed, per_row=cfg.per_row)
        embedded.append(z if len(z) else np.zeros((1, cfg.zdim), np.float32))
    songs = SongSet(embedded, split.cliques, late_fraction=cfg.late_fraction if cfg.per_row else None)
    blocks = ((i, j, song_distances(songs.tiles[i], songs.tiles[j], opts.val_topk).numpy())
              for i, j in songs.tile_pairs())  # no progress bar: the epoch's own is live
    return assemble_distances(songs, blocks)


def separation(distances: np.ndarray, cliques: list[str]) -> float:
    """Mean over queries of (mean distance to the other songs' versions − mean distance to the
    query's own clique, itself excluded): how far apart a model puts versions and non-versions.
    It breaks ties between checkpoints of equal validation MAP (e.g. a saturated split)."""
    labels = np.asarray(cliques)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    keep = same.any(1) & other.any(1)
    if not keep.any():
        return 0.0
    d = np.asarray(distances, dtype=np.float64)
    relevant = (d * same).sum(1)[keep] / same.sum(1)[keep]
    irrelevant = (d * other).sum(1)[keep] / other.sum(1)[keep]
    return float(np.mean(irrelevant - relevant))


def validate(distances: np.ndarray, split: DatasetSplit, ties: str = "expected") -> Metrics:
    return retrieval_metrics(distances, split.cliques, split.cliques, split.keys, split.keys, ties=ties)


def start_rows(store: Store, keys: list[str], sung_only: bool, limit: int = 200_000, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` training rows (a seeded sample when there are more): what a late-interaction
    model's centre and starting projection are computed from."""
    rows = np.concatenate([read_rows(store, k, sung_only).astype(np.float32) for k in keys])
    if len(rows) > limit:
        rows = rows[np.random.default_rng(seed).choice(len(rows), limit, replace=False)]
    return torch.from_numpy(rows)


# ---------------------------------------------------------------- checkpoints


def write_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    replace_atomically(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file: the user's to fix
        raise UserError(f"{path}: cannot read training state ({type(err).__name__}: {err})") from err


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(history)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    replace_atomically(tmp, path)


class _TensorBoard:
    """Scalars to TensorBoard when the tensorboard package is installed; otherwise nothing."""

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(str(directory / "tensorboard"))

    def log(self, row: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(row["epoch"]))
            self.writer.flush()


# ---------------------------------------------------------------- the loop


def _precision(opts: TrainOptions, accelerator: str) -> str:
    if opts.precision == "auto":
        return "bf16-mixed" if accelerator == "cuda" else "32-true"
    return {"32": "32-true"}.get(opts.precision, opts.precision)


def check_splits(train: DatasetSplit, val: DatasetSplit, opts: TrainOptions, processes: int) -> None:
    need = opts.batch_size * processes
    if len(train) < need:
        raise UserError(f"train split has {len(train)} versions in the store, fewer than one global batch "
                        f"(--batch-size {opts.batch_size} × {processes} process(es)); lower --batch-size")
    if len(val) < 2:
        raise UserError("val split has fewer than 2 versions in the store (need cliques with ≥ 2 versions)")


def run_training(run: TrainRun, on_start: Callable[[str], None] | None = None) -> TrainResult | None:
    """Load the store and both splits, then train; ``on_start(summary)`` is called once, by rank
    0, under the run directory's lock, before training starts. Returns the result on rank 0,
    else None."""
    resolve_devices(run)  # a device problem is reported before any data is read
    store = Store(run.store)
    train_split = load_split(run.dataset, run.split, run.metadata, check_audio=False).restrict(store.keys())
    val_split = load_split(run.dataset, run.val_split, run.metadata, check_audio=False).restrict(store.keys())

    def started() -> None:
        params = count_parameters(build_model(ModelConfig.from_options(run, store.dim)))
        on_start(f"train: {len(train_split)} versions / {train_split.n_cliques()} cliques; val: "
                 f"{len(val_split)} / {val_split.n_cliques()}; model {params / 1e6:.2f} M parameters → "
                 f"{run.run_dir()}")

    result = train(run, store, train_split, val_split, on_start=started if on_start is not None else None)
    return result if result.rank == 0 else None


def train(opts: TrainRun, store: Store, train_split: DatasetSplit, val_split: DatasetSplit,
          on_start: Callable[[], None] | None = None) -> TrainResult:
    """Run (or resume) training; returns what happened. Works on 1 or N devices on 1 or M nodes.

    The run directory is locked for the whole run (by rank 0, every rank learning whether it
    could): a second run on it is refused instead of interleaving metrics.csv or replacing
    checkpoints; a killed run leaves no lock behind, so ``--resume`` works at once. ``on_start``
    is called by rank 0 under the lock, before anything is written."""
    devices = resolve_devices(opts)
    check_splits(train_split, val_split, opts, devices.processes * opts.nodes)
    if ModelConfig.from_options(opts, store.dim).text_rows:  # refused before the run starts if unreadable
        sung_features(store, train_split.keys[0])
    with launch(devices, opts.nodes, peer_timeout=opts.peer_timeout, precision=_precision(opts, devices.accelerator),
                fabric=True, lock=(opts.run_dir(), "training run")) as workers:
        workers.check_same([*train_split.keys, "", *val_split.keys], "the training and validation versions")
        if on_start is not None and workers.is_main:
            on_start()
        return _train(opts, store, train_split, val_split, workers)


def _train(opts: TrainRun, store: Store, train_split: DatasetSplit, val_split: DatasetSplit,
           workers: Workers) -> TrainResult:
    model_config = ModelConfig.from_options(opts, store.dim)
    out = opts.run_dir()
    state_path = out / STATE
    if state_path.exists() and not opts.resume:
        raise UserError(f"{out}: holds a training run already; pass --resume to continue it or use another --output")
    state = read_state(state_path) if opts.resume and state_path.exists() else None
    if state is not None and state["model_config"] != model_config.to_dict():
        raise UserError(f"{state_path}: saved model config differs from the current options; "
                        f"resume with the same model settings")

    fabric = workers.fabric
    fabric.seed_everything(opts.seed, verbose=False)
    model = build_model(model_config)
    if model_config.per_row and state is None:  # start at the training-free late interaction
        model.initialise(start_rows(store, train_split.keys, model_config.text_rows, seed=opts.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch, best_map, best_epoch, bad_epochs, step = 0, -1.0, -1, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_map, best_epoch, bad_epochs = float(state["best_map"]), int(state["best_epoch"]), int(state["bad_epochs"])
        history = [dict(row) for row in state["history"]]
        best_map, best_epoch = _reconcile_best(out, best_map, best_epoch)
        if fabric.global_rank == 0:  # temporaries of writes that a kill interrupted
            for stale in out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
    model, optimizer = fabric.setup(model, optimizer)
    loss_fn = make_loss(opts)
    world, rank = fabric.world_size, fabric.global_rank
    is_main = rank == 0
    tensorboard = _TensorBoard(out) if is_main else None
    val_batch = opts.batch_size * opts.per_clique
    started = time.monotonic()

    def validation() -> dict[str, float]:
        if model_config.per_row or opts.val_mode == "evaluate":
            distances = evaluation_distances(model, store, val_split, opts, val_batch, model_config)
        else:
            z = embed_validation(fabric, model, store, val_split.keys, opts.chunk, val_batch, opts.loader_workers,
                                 model_config.text_rows)
            distances = 1.0 - z @ z.T
        return {**_metric_row(validate(distances, val_split, opts.ties)),
                "val_margin": separation(distances, val_split.cliques)}

    def over_time() -> bool:
        if opts.time_limit <= 0:
            return False
        # Rank 0 decides, so that every device stops at the same step.
        return bool(fabric.broadcast(time.monotonic() - started > opts.time_limit * 60, src=0))

    def save(epoch: int, row: dict[str, float], improved: bool) -> None:
        if is_main:
            extra = {"epoch": epoch, "step": step, "val_map": row.get("val_map"), "best_map": best_map}
            if improved:
                save_weights(out / "best", model, model_config, extra)
            save_weights(out / "last", model, model_config, extra)
            write_state(state_path, {
                "epoch": epoch, "step": step, "best_map": best_map, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "model": {k: v.detach().cpu() for k, v in _plain(model).state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": epoch, "lr": row.get("lr", 0.0)},
                "model_config": model_config.to_dict(), "history": history, "world_size": world,
            })
            write_metrics_csv(out / METRICS, history)
            tensorboard.log(row)
        workers.barrier()

    if state is None:  # epoch 0: how the untrained model does
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
        row = {"epoch": 0, "step": 0, **validation()}
        history.append(row)
        best_map, best_epoch = row["val_map"], 0
        save(0, row, improved=True)
        _report(row, is_main)

    stop_reason = "max epochs"
    epoch = start_epoch
    while epoch < opts.max_epochs:
        lr = lr_at(epoch, opts)
        if epoch >= opts.warmup_epochs and lr < opts.min_lr:
            stop_reason = "lr below min_lr"
            break
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(opts.seed * 7919 + epoch * 104729 + rank)  # dropout draws of this epoch
        items = rank_batches(plan_epoch(train_split, opts.per_clique, opts.seed, epoch), opts.batch_size, world,
                             rank, opts.limit_batches)
        loader = DataLoader(CropDataset(store, items, opts.chunk, model_config.text_rows, ViewOptions.of(opts)),
                            batch_size=opts.batch_size,
                            collate_fn=collate,
                            num_workers=opts.loader_workers, shuffle=False, pin_memory=fabric.device.type == "cuda")
        model.train()
        losses, samples, t0 = [], 0, time.monotonic()
        interrupted = False
        with ui.progress(transient=True) if is_main else contextlib.nullcontext() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{opts.max_epochs}", total=len(loader), status="") \
                if progress is not None else None
            for batch in loader:
                x, mask = model_input(fabric, batch)
                labels, ids = fabric.to_device(batch["labels"]), fabric.to_device(batch["ids"])
                with fabric.autocast():
                    embedded = model(x, mask)
                if opts.gather:
                    embedded, mask, labels, ids = gather_batch(fabric, embedded, mask, labels, ids)
                loss = loss_fn(batch_similarity(embedded, mask, model_config), labels, ids)
                fabric.backward(loss * world if opts.gather else loss)
                if opts.grad_clip > 0:
                    fabric.clip_gradients(model, optimizer, max_norm=opts.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                workers.check()
                mean_loss = fabric.all_reduce(loss.detach(), reduce_op="mean") if not opts.gather else loss.detach()
                losses.append(float(mean_loss))
                samples += len(x) * world
                if task is not None:
                    rate = samples / max(time.monotonic() - t0, 1e-9)
                    progress.update(task, advance=1, status=f"loss {losses[-1]:.4f} lr {lr:.2e} {rate:.1f} samples/s")
                if over_time():
                    interrupted = True
                    break
        if interrupted:
            stop_reason = "time limit (partial epoch discarded)"
            break
        seconds = time.monotonic() - t0
        scores = validation()
        epoch += 1
        row = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": lr, "samples_per_s": samples / max(seconds, 1e-9), "epoch_seconds": seconds, **scores}
        history.append(row)
        # Better validation MAP; at an equal MAP (a saturated validation split), a wider separation.
        best_margin = next((r.get("val_margin", -math.inf) for r in history if r["epoch"] == best_epoch), -math.inf)
        improved = (row["val_map"], row["val_margin"]) > (best_map, best_margin)
        if improved:
            best_map, best_epoch, bad_epochs = row["val_map"], epoch, 0
        elif epoch > opts.warmup_epochs:  # warm-up epochs never count against --patience
            bad_epochs += 1
        save(epoch, row, improved)
        _report(row, is_main)
        if opts.patience and bad_epochs >= opts.patience:
            stop_reason = f"no improvement for {opts.patience} epochs"
            break
        if over_time():
            stop_reason = "time limit"
            break
    return TrainResult(epoch, best_epoch, best_map, stop_reason, history, rank)


def _reconcile_best(out: Path, best_map: float, best_epoch: int) -> tuple[float, int]:
    """A kill after writing best.* but before state.pt leaves a best file newer than the state:
    keep the metric that the best file really holds."""
    config = out / "best.config.json"
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return best_map, best_epoch
    if meta.get("val_map") is not None and float(meta["val_map"]) > best_map:
        return float(meta["val_map"]), int(meta.get("epoch", best_epoch))
    return best_map, best_epoch


def _metric_row(metrics: Metrics) -> dict[str, float]:
    return {"val_map": metrics.map, "val_mr1": metrics.mr1, "val_arp": metrics.arp, "val_comp": comp(metrics)}


def _report(row: dict[str, float], is_main: bool) -> None:
    if is_main and not ui.is_quiet():
        loss = f"loss {row['train_loss']:.4f}  " if "train_loss" in row else ""
        ui.console.print(f"epoch {int(row['epoch'])}: {loss}val MAP {row['val_map']:.4f}  "
                         f"MR1 {row['val_mr1']:.2f}  ARP {row['val_arp']:.2f}", highlight=False)
