"""(d) Trained late interaction (ColBERT-style) over Whisper decoder text-token rows.

Model: rows r (text-token rows of a song, see common.Song.text_mask) → centred by the training
split's mean row μ → g(r) → L2-normalised. g is one of
  linear    : W (r − μ) + b, W d×D, initialised to the identity (D = d) or to the top-D
              principal axes of the centred training rows (D < d); b = 0 at start;
  residual  : (r − μ) + W₂ relu(W₁ (r − μ)) with W₂ = 0 at start (so g = centring at start);
  xformer   : one pre-norm transformer layer over the song's rows, residual, output
              projection zero-initialised (contextual rows; starts as centring).
Song score: symmetric mean MaxSim (late_interaction with sym=mean, top=1), or another
late_interaction option. At initialisation (identity / zero residual) the model *is* the
training-free late interaction, so epoch 0 is that baseline.

Training: an epoch visits every training clique once, in batches of ``cliques`` cliques; for
each clique two different versions, each cropped to a random contiguous ``crop`` fraction
(30–100 % by default) of its text rows, drawn anew every epoch. Loss: multi-positive NT-Xent
(wealy_cli.losses.ntxent_loss's definition) on the MaxSim score matrix of the batch divided by
τ. AdamW; L2 pull of the weights towards their initial values (``anchor``) instead of towards 0.
Validation after every epoch: training-free-style late interaction on the projected val rows,
MAP; the best epoch's weights are kept (selection on validation only).

    python colbert.py --name lin384 --proj linear --dim 384 --epochs 40
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, load, record, save_matrix, score
from late_interaction import directional_scores, mean_row, symmetrise
from torch import nn


class Projection(nn.Module):
    def __init__(self, kind: str, d: int, dim: int, init: np.ndarray | None, hidden: int = 256,
                 heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.lin = nn.Linear(d, dim)
            with torch.no_grad():
                self.lin.weight.copy_(torch.from_numpy(init) if init is not None else torch.eye(dim, d))
                self.lin.bias.zero_()
        elif kind == "residual":
            self.up = nn.Linear(d, hidden)
            self.down = nn.Linear(hidden, d)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)
        elif kind == "xformer":
            self.layer = nn.TransformerEncoderLayer(d, heads, hidden, dropout=dropout, batch_first=True,
                                                    norm_first=True)
            nn.init.zeros_(self.layer.linear2.weight)
            nn.init.zeros_(self.layer.linear2.bias)
            nn.init.zeros_(self.layer.self_attn.out_proj.weight)
            nn.init.zeros_(self.layer.self_attn.out_proj.bias)
        else:
            raise ValueError(kind)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) centred rows (or (T, d)); mask (B, T) True = valid."""
        if self.kind == "linear":
            y = self.lin(self.drop(x))
        elif self.kind == "residual":
            y = x + self.down(self.drop(F.relu(self.up(x))))
        else:
            squeeze = x.dim() == 2
            xb = x[None] if squeeze else x
            pad = None if mask is None else ~mask
            y = self.layer(xb, src_key_padding_mask=pad)
            y = y[0] if squeeze else y
        return F.normalize(y, dim=-1)


def maxsim_matrix(views: list[torch.Tensor], sym: str = "mean", top: float = 1.0) -> torch.Tensor:
    """(V, V) symmetrised MaxSim scores of normalised row sets (differentiable); ``top`` < 1
    averages only the best ``top`` fraction of a view's row maxima (as late_interaction._agg)."""
    lengths = [len(v) for v in views]
    allrows = torch.cat(views)
    sims = allrows @ allrows.T
    starts = np.cumsum([0] + lengths)
    # best match of every row in every view: max over column segments
    best = torch.stack([sims[:, starts[j]:starts[j + 1]].max(dim=1).values for j in range(len(views))], dim=1)
    def agg(b: torch.Tensor) -> torch.Tensor:
        if top >= 1:
            return b.mean(0)
        k = max(1, math.ceil(top * b.shape[0]))
        return b.topk(k, dim=0).values.mean(0)

    directional = torch.stack([agg(best[starts[i]:starts[i + 1]]) for i in range(len(views))])  # (V, V)
    if sym == "mean":
        return (directional + directional.T) / 2
    if sym == "shorter":
        lens = torch.tensor(lengths)
        first = lens[:, None] <= lens[None, :]
        return torch.where(first, directional, directional.T)
    raise ValueError(sym)


def ntxent_from_scores(s: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive NT-Xent on a score matrix (self excluded)."""
    n = len(labels)
    eye = torch.eye(n, dtype=torch.bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logits = s / tau
    minus_inf = torch.finfo(logits.dtype).min
    log_pos = torch.where(pos, logits, minus_inf).logsumexp(1)
    log_all = torch.where(~eye, logits, minus_inf).logsumexp(1)
    keep = pos.any(1)
    return (log_all - log_pos)[keep].mean()


def pca_init(rows: np.ndarray, dim: int) -> np.ndarray:
    cov = rows.T @ rows / len(rows)
    vals, vecs = np.linalg.eigh(cov)
    return vecs[:, ::-1][:, :dim].T.copy().astype(np.float32)  # (dim, d)


@torch.no_grad()
def project_split(model: Projection, rows: list[np.ndarray], mu: np.ndarray) -> list[np.ndarray]:
    model.eval()
    out = []
    for r in rows:
        if len(r) == 0:
            out.append(np.zeros((1, model_dim(model)), np.float32))
            continue
        out.append(model(torch.from_numpy(r - mu)).numpy())
    return out


def model_dim(model: Projection) -> int:
    return model.lin.out_features if model.kind == "linear" else model.down.out_features if model.kind == "residual" \
        else model.layer.linear2.out_features


def li_from_projected(mats: list[np.ndarray], sym: str = "mean", top: float = 1.0) -> np.ndarray:
    """1 − symmetrised late-interaction score of projected (normalised) row sets."""
    weights = [np.ones(len(m), np.float32) for m in mats]
    directional = directional_scores(mats, weights, top)
    return 1.0 - symmetrise(directional, np.array([len(m) for m in mats]), sym)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--proj", default="linear", choices=["linear", "residual", "xformer"])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--cliques", type=int, default=16, help="cliques per batch (2 views each)")
    p.add_argument("--crop", type=str, default="0.3:1.0", help="min:max fraction of a version's text rows")
    p.add_argument("--max-rows", type=int, default=160, help="cap on a view's rows (speed)")
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--anchor", type=float, default=0.0, help="L2 weight of (W − W_init)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--sym", default="mean", choices=["mean", "shorter"])
    p.add_argument("--top", type=float, default=1.0, help="score: mean of the best fraction of row maxima")
    p.add_argument("--rows", default="text", choices=["text", "generated", "all"], help="rows a song is made of")
    p.add_argument("--no-centre", action="store_true", help="do not subtract the training mean row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test", action="store_true", help="also score the best epoch on test (after selection)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.process_time()
    wall_start = time.time()

    train, val = load("train"), load("val")
    mu = mean_row(train.songs, args.rows)
    if args.no_centre:
        mu = np.zeros_like(mu)
    train_rows = [s.select(args.rows) for s in train.songs]
    val_rows = [s.select(args.rows) for s in val.songs]
    init = None
    if args.proj == "linear" and args.dim != train_rows[0].shape[1]:
        init = pca_init(np.concatenate(train_rows) - mu, args.dim)
    model = Projection(args.proj, train_rows[0].shape[1], args.dim, init, args.hidden, dropout=args.dropout)
    start_params = [q.detach().clone() for q in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    cliques: dict[str, list[int]] = {}
    for i, s in enumerate(train.songs):
        if len(train_rows[i]) >= 4:
            cliques.setdefault(s.clique, []).append(i)
    clique_names = sorted(c for c, m in cliques.items() if len(m) >= 2)
    lo, hi = (float(x) for x in args.crop.split(":"))
    steps_per_epoch = math.ceil(len(clique_names) / args.cliques)
    total_steps = steps_per_epoch * args.epochs

    def crop(r: np.ndarray) -> np.ndarray:
        n = len(r)
        k = max(4, int(round(rng.uniform(lo, hi) * n)))
        k = min(k, n, args.max_rows)
        s0 = int(rng.integers(0, n - k + 1))
        return r[s0:s0 + k]

    def validate() -> tuple[float, np.ndarray]:
        d = li_from_projected(project_split(model, val_rows, mu), args.sym, args.top)
        return score(d, val).map, d

    history = []
    best_map, _ = validate()
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    history.append({"epoch": 0, "val_map": best_map})
    print(f"epoch 0: val MAP {best_map:.4f}", flush=True)
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(clique_names))
        losses = []
        for b in range(steps_per_epoch):
            batch = [clique_names[i] for i in order[b * args.cliques:(b + 1) * args.cliques]]
            if len(batch) < 2:
                continue
            views, labels = [], []
            for c_i, c in enumerate(batch):
                a, bb = rng.choice(cliques[c], size=2, replace=False)
                for v in (a, bb):
                    views.append(torch.from_numpy(crop(train_rows[v]) - mu))
                    labels.append(c_i)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            if args.proj == "xformer":
                lengths = [len(v) for v in views]
                x = nn.utils.rnn.pad_sequence(views, batch_first=True)
                mask = torch.arange(x.shape[1])[None] < torch.tensor(lengths)[:, None]
                y = model(x, mask)
                out = [y[i, :n] for i, n in enumerate(lengths)]
            else:
                out = [model(v) for v in views]
            s = maxsim_matrix(out, args.sym, args.top)
            loss = ntxent_from_scores(s, torch.tensor(labels), args.tau)
            if args.anchor > 0:
                drift = sum(((q - q0) ** 2).sum() for q, q0 in zip(model.parameters(), start_params))
                loss = loss + args.anchor * drift
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            step += 1
        val_map, _ = validate()
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_map": val_map})
        print(f"epoch {epoch}: loss {np.mean(losses):.4f} val MAP {val_map:.4f}", flush=True)
        if val_map > best_map:
            best_map, best_epoch, best_state = val_map, epoch, copy.deepcopy(model.state_dict())
    cpu_min = (time.process_time() - t_start) / 60
    wall_min = (time.time() - wall_start) / 60
    model.load_state_dict(best_state)
    results = {}
    d_val = li_from_projected(project_split(model, val_rows, mu), args.sym, args.top)
    results["val"] = score(d_val, val)
    save_matrix(f"colbert-{args.name}", val, d_val)
    if args.test:
        test = load("test")
        d_test = li_from_projected(project_split(model, [s.select(args.rows) for s in test.songs], mu), args.sym,
                                   args.top)
        results["test"] = score(d_test, test)
        save_matrix(f"colbert-{args.name}", test, d_test)
    (RESULTS / "colbert").mkdir(parents=True, exist_ok=True)
    torch.save({"state": best_state, "mu": mu, "args": vars(args)}, RESULTS / "colbert" / f"{args.name}.pt")
    record("colbert", args.name, results, args=vars(args), best_epoch=best_epoch, epoch0_val_map=history[0]["val_map"],
           cpu_minutes=round(cpu_min, 2), wall_minutes=round(wall_min, 2), history=history)


if __name__ == "__main__":
    main()
