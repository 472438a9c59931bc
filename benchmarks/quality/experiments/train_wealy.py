"""(c) Trained WEALY (single pooled vector per chunk) with generalisation levers, one at a time.

The model and loss are wealy's own (wealy_cli.model.build_model, wealy_cli.losses.ntxent_loss);
this file is a training loop that mirrors wealy_cli/training.py (one item per training version
plus another version of its clique, AdamW, linear warm-up then cosine per epoch, best epoch by
validation MAP) and adds the levers below. The stock recipe is `wealy demo`'s small model:
hidden 256, zdim 128, 2 layers, 4 heads, FF 512, dropout 0.1, chunk 512, lr 5e-4, warm-up 5,
weight decay 1e-3, batch 16 items (32 sequences), NT-Xent τ 0.1.

Levers (each off in the stock recipe):
  --rows text          text-token rows only (common.Song.text_mask) instead of all rows
  --centre             subtract the training split's mean row from every input row
  --crop 0.3:1.0       each training sequence is a random contiguous span of 30–100 % of its rows
                       (drawn per item and epoch), then capped at --chunk rows; stock: a random
                       --chunk-row window (the whole song when shorter, i.e. here almost always)
  --mask-spans K       K contiguous spans, each of up to 10 % of the sequence's rows, masked out
                       (removed from the attention/pooling mask)
  --drop-windows P     each Whisper window of a training sequence is dropped with probability P
                       (at least one window kept), before cropping
  --noise S            Gaussian noise of S × (per-dimension std of training rows) added to rows
  --dropout, --weight-decay, --hidden/--layers/--heads/--ff/--zdim: as named
  --ema D              evaluate an exponential moving average of the weights (decay D per step)
  --val-mode first     validation on the first --chunk rows of each version (what `wealy train`
                       does); default 'chunks': overlapping chunks (1500 rows, overlap 0.9) and
                       top-1 chunk-pair distance, exactly like `wealy evaluate`
Selection: the epoch with the best validation MAP (early stopping by validation); the last
epoch's numbers are recorded too.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import load, record, save_matrix, score
from late_interaction import mean_row

from wealy_cli.model.losses import ntxent_loss
from wealy_cli.model.network import ModelConfig, build_model
from wealy_cli.ranking.chunks import chunk_spans


def rows_of(song, which: str) -> tuple[np.ndarray, np.ndarray]:
    mask = song.mask(which)
    return song.rows[mask], song.window[mask]


@torch.no_grad()
def embed_chunks(model, seqs: list[np.ndarray], chunk: int, overlap: float, first_only: bool,
                 batch: int = 32) -> list[np.ndarray]:
    """Per song: (n_chunks, zdim) L2-normalised chunk embeddings."""
    model.eval()
    work = []
    for i, s in enumerate(seqs):
        spans = [(0, min(len(s), chunk))] if first_only else chunk_spans(len(s), chunk, overlap)
        if not spans:
            spans = [(0, 0)]
        work.extend((i, a, b) for a, b in spans)
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    d = seqs[0].shape[1]
    for k in range(0, len(work), batch):
        part = work[k:k + batch]
        T = max(1, max(b - a for _, a, b in part))
        x = torch.zeros(len(part), T, d)
        mask = torch.zeros(len(part), T, dtype=torch.bool)
        for j, (i, a, b) in enumerate(part):
            x[j, :b - a] = torch.from_numpy(seqs[i][a:b])
            mask[j, :b - a] = True
        z = F.normalize(model(x, mask).float(), dim=-1)
        for j, (i, _, _) in enumerate(part):
            out[i].append(z[j])
    return [torch.stack(o).numpy() for o in out]


def chunk_distances(embs: list[np.ndarray], topk: int = 1) -> np.ndarray:
    """Song distance = mean of the k smallest chunk-pair cosine distances."""
    n = len(embs)
    allz = np.concatenate(embs)
    starts = np.cumsum([0] + [len(e) for e in embs])
    d = np.zeros((n, n))
    for i in range(n):
        dist = 1.0 - embs[i] @ allz.T
        for j in range(n):
            block = np.sort(dist[:, starts[j]:starts[j + 1]].ravel())
            d[i, j] = block[:topk].mean()
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--rows", default="all", choices=["all", "generated", "text"])
    p.add_argument("--centre", action="store_true")
    p.add_argument("--crop", default="", help="min:max fraction (random sub-sequence crops); '' = fixed chunk crops")
    p.add_argument("--mask-spans", type=int, default=0)
    p.add_argument("--drop-windows", type=float, default=0.0)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--zdim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ff", type=int, default=512)
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--val-mode", default="chunks", choices=["chunks", "first"])
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="items (each 2 versions of a clique) per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_cpu, t_wall = time.process_time(), time.time()

    train, val = load("train"), load("val")
    mu = mean_row(train.songs, args.rows) if args.centre else np.zeros(train.songs[0].rows.shape[1], np.float32)
    tr = [rows_of(s, args.rows) for s in train.songs]
    tr = [(r - mu, w) for r, w in tr]
    va = [rows_of(s, args.rows)[0] - mu for s in val.songs]
    std = np.concatenate([r for r, _ in tr]).std(0).astype(np.float32)
    cfg = ModelConfig(input_channels=tr[0][0].shape[1], hidden_dim=args.hidden, zdim=args.zdim,
                      num_transformer_blocks=args.layers, num_heads=args.heads, ff_dim=args.ff, dropout=args.dropout)
    model = build_model(cfg)
    ema = copy.deepcopy(model) if args.ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    members: dict[str, list[int]] = {}
    for i, s in enumerate(train.songs):
        members.setdefault(s.clique, []).append(i)
    clique_id = {c: k for k, c in enumerate(sorted(members))}
    lo_hi = tuple(float(x) for x in args.crop.split(":")) if args.crop else None

    def view(i: int) -> np.ndarray:
        r, w = tr[i]
        if args.drop_windows > 0 and len(set(w.tolist())) > 1:
            wins = sorted(set(w.tolist()))
            keep = [x for x in wins if rng.random() >= args.drop_windows] or [int(rng.choice(wins))]
            sel = np.isin(w, keep)
            r = r[sel]
        n = len(r)
        if lo_hi is not None and n > 0:
            k = max(1, int(round(rng.uniform(*lo_hi) * n)))
            s0 = int(rng.integers(0, n - k + 1))
            r = r[s0:s0 + k]
            n = len(r)
        if n > args.chunk:
            s0 = int(rng.integers(0, n - args.chunk + 1))
            r = r[s0:s0 + args.chunk]
        r = r.copy()
        if args.noise > 0:
            r += rng.standard_normal(r.shape).astype(np.float32) * args.noise * std
        return r

    def span_mask(n: int) -> np.ndarray:
        m = np.ones(n, bool)
        for _ in range(args.mask_spans):
            width = int(rng.integers(0, max(1, int(0.1 * n)) + 1))
            if width and n - width > 0:
                s0 = int(rng.integers(0, n - width + 1))
                m[s0:s0 + width] = False
        if not m.any():
            m[0] = True
        return m

    def validate(net) -> tuple[float, np.ndarray]:
        embs = embed_chunks(net, va, args.chunk if args.val_mode == "first" else 1500, 0.9, args.val_mode == "first")
        d = chunk_distances(embs)
        return score(d, val).map, d

    def lr_at(epoch: int) -> float:
        if epoch < args.warmup:
            return args.lr * (epoch + 1) / args.warmup
        span = max(1, args.epochs - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - args.warmup) / span)))

    history = []
    best_map, _ = validate(model)
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    history.append({"epoch": 0, "val_map": best_map})
    print(f"epoch 0: val MAP {best_map:.4f}", flush=True)
    for epoch in range(args.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch)
        model.train()
        order = rng.permutation(len(train.songs))
        losses = []
        for b in range(len(order) // args.batch):
            seqs, labels, ids = [], [], []
            for i in order[b * args.batch:(b + 1) * args.batch]:
                others = [j for j in members[train.songs[i].clique] if j != i]
                j = int(rng.choice(others))
                for v in (int(i), j):
                    seqs.append(view(v))
                    labels.append(clique_id[train.songs[v].clique])
                    ids.append(v)
            T = max(1, max(len(s) for s in seqs))
            x = torch.zeros(len(seqs), T, seqs[0].shape[1])
            mask = torch.zeros(len(seqs), T, dtype=torch.bool)
            for k, s in enumerate(seqs):
                x[k, :len(s)] = torch.from_numpy(s)
                mask[k, :len(s)] = torch.from_numpy(span_mask(len(s))) if args.mask_spans else True
            z = model(x, mask)
            loss = ntxent_loss(z, torch.tensor(labels), torch.tensor(ids), args.tau)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.mul_(args.ema).add_(pm, alpha=1 - args.ema)
            losses.append(float(loss))
        net = ema if ema is not None else model
        val_map, _ = validate(net)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_map": val_map})
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f} val MAP {val_map:.4f}", flush=True)
        if val_map > best_map:
            best_map, best_epoch, best_state = val_map, epoch + 1, copy.deepcopy(net.state_dict())
    cpu_min, wall_min = (time.process_time() - t_cpu) / 60, (time.time() - t_wall) / 60
    last_state = copy.deepcopy((ema if ema is not None else model).state_dict())
    results, extra = {}, {}
    final = build_model(cfg)
    final.load_state_dict(best_state)

    def eval_split(split, net):
        seqs = [rows_of(s, args.rows)[0] - mu for s in split.songs]
        return chunk_distances(embed_chunks(net, seqs, 1500, 0.9, False))

    d_val = eval_split(val, final)
    results["val"] = score(d_val, val)
    save_matrix(f"wealy-{args.name}", val, d_val)
    if args.test:
        test = load("test")
        d_test = eval_split(test, final)
        results["test"] = score(d_test, test)
        save_matrix(f"wealy-{args.name}", test, d_test)
        last = build_model(cfg)
        last.load_state_dict(last_state)
        extra["last_epoch_test"] = score(eval_split(test, last), test).to_dict()
    extra["last_epoch_val_map"] = history[-1]["val_map"]
    record("wealy", args.name, results, args=vars(args), best_epoch=best_epoch, cpu_minutes=round(cpu_min, 2),
           wall_minutes=round(wall_min, 2), history=history, **extra)


if __name__ == "__main__":
    main()
