"""Chunks of a song's feature rows and their embeddings.

A song's feature matrix (rows × d_in) is cut into overlapping chunks (DESIGN §6: 1500 rows,
overlap 0.9 → stride 150, plus a final tail-aligned chunk so the end is never dropped); each
chunk is embedded by the model and L2-normalised. Training validation, evaluation and catalogue
search all cut and embed songs through this module, so they score songs the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wealy_cli.core import ui
from wealy_cli.core.layers import pad_sequences
from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.ranking.options import EmbedOptions


def chunk_spans(n_rows: int, chunk: int, overlap: float) -> list[tuple[int, int]]:
    """(start, stop) row spans of overlapping chunks; the last chunk is aligned to the end.

    A sequence no longer than ``chunk`` gives one (shorter, masked) chunk; an empty one none."""
    if chunk < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"chunk must be ≥ 1 and overlap in [0, 1), got {chunk}, {overlap}")
    if n_rows <= 0:
        return []
    if n_rows <= chunk:
        return [(0, n_rows)]
    stride = max(1, round(chunk * (1.0 - overlap)))
    spans = [(s, s + chunk) for s in range(0, n_rows - chunk + 1, stride)]
    if spans[-1][1] < n_rows:
        spans.append((n_rows - chunk, n_rows))
    return spans


def embedding_groups(features: Store, keys: Sequence[str], opts: EmbedOptions) -> list[list[str]]:
    """Consecutive keys in groups of about ``batch_size`` chunks. The groups, not the workers,
    decide what is batched together, so any number of workers computes the same numbers."""
    groups: list[list[str]] = [[]]
    filled = 0
    for key in keys:
        if filled >= opts.batch_size:
            groups.append([])
            filled = 0
        groups[-1].append(key)
        filled += max(1, len(chunk_spans(features.rows(key), opts.chunk, opts.overlap)))
    return [g for g in groups if g]


RowReader = Callable[[Store, str], np.ndarray]


def all_rows(store: Store, key: str) -> np.ndarray:
    """Every stored row of an item (what the paper's model reads)."""
    return np.asarray(store[key])


def row_pieces(n_rows: int, chunk: int) -> list[tuple[int, int]]:
    """Consecutive, non-overlapping spans of at most ``chunk`` rows: how a per-row model (late
    interaction) is fed a song; its outputs do not depend on the cut."""
    return [(s, min(s + chunk, n_rows)) for s in range(0, n_rows, chunk)]


@torch.no_grad()
def embed_chunks(model: torch.nn.Module, features: Store, groups: Sequence[Sequence[str]], cache: StoreWriter,
                 opts: EmbedOptions, label: str = "embedding chunks",
                 check: Callable[[], None] | None = None, read: RowReader = all_rows,
                 per_row: bool = False) -> list[str]:
    """Embed every chunk of the keys (in ``embedding_groups``) not yet in ``cache``; returns the
    keys that had no feature rows (recorded as failures in the cache). ``check`` is called after
    every group (it raises to stop the run).

    ``read`` picks an item's rows (e.g. only those of sung tokens). With ``per_row`` the model
    embeds every row (late interaction) and the cache holds one vector per row; a song without
    rows then gets one zero row (it scores 0 with every song) instead of being dropped."""
    model.eval()
    empty: list[str] = []
    total = sum(len(g) for g in groups)
    with ui.progress() as bar:
        task = bar.add_task(label, total=total, status="")
        for group in groups:
            pending: list[tuple[str, int]] = []
            chunks: list[torch.Tensor] = []
            for key in group:
                if key in cache:
                    continue
                rows = torch.from_numpy(np.asarray(read(features, key), dtype=np.float32))
                if per_row:
                    cache.add(key, _embed_every_row(model, rows, opts))
                    continue
                spans = chunk_spans(rows.shape[0], opts.chunk, opts.overlap)
                if not spans:
                    empty.append(key)
                    cache.fail(key, "no feature rows")
                    continue
                pending.append((key, len(spans)))
                chunks.extend(rows[a:b] for a, b in spans)
            if pending:
                _flush(model, pending, chunks, cache, opts)
            bar.advance(task, len(group))
            if check is not None:
                check()
    return empty


def _embed_every_row(model: torch.nn.Module, rows: torch.Tensor, opts: EmbedOptions) -> np.ndarray:
    """(rows, zdim) L2-normalised row embeddings of one song; one zero row when it has none."""
    pieces = [rows[a:b] for a, b in row_pieces(rows.shape[0], opts.chunk)]
    out = []
    for i in range(0, len(pieces), opts.batch_size):
        batch = pieces[i:i + opts.batch_size]
        x, mask = pad_sequences(batch, device=next(model.parameters()).device)
        z = F.normalize(model(x, mask).float(), dim=-1).cpu()
        out.extend(z[j, :len(p)] for j, p in enumerate(batch))
    if not out:
        zdim = int(model.cfg.zdim)
        return np.zeros((1, zdim), np.float32)
    return torch.cat(out).numpy()


@torch.no_grad()
def embed_rows(model: torch.nn.Module, rows: np.ndarray, opts: EmbedOptions, per_row: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings (chunks × zdim, or rows × zdim with ``per_row``) of one
    song's feature rows, cut and embedded as ``embed_chunks`` does (an audio query is scored like
    a stored song)."""
    model.eval()
    features = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    if per_row:
        return _embed_every_row(model, features, opts)
    chunks = [features[a:b] for a, b in chunk_spans(features.shape[0], opts.chunk, opts.overlap)]
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return torch.cat([_embed(model, chunks[i:i + opts.batch_size])
                      for i in range(0, len(chunks), opts.batch_size)]).numpy()


def _flush(model: torch.nn.Module, pending: list[tuple[str, int]], chunks: list[torch.Tensor],
           cache: StoreWriter, opts: EmbedOptions) -> None:
    z = torch.cat([_embed(model, chunks[i:i + opts.batch_size]) for i in range(0, len(chunks), opts.batch_size)])
    start = 0
    for key, n in pending:
        cache.add(key, z[start:start + n].numpy())
        start += n


def _embed(model: torch.nn.Module, chunks: list[torch.Tensor]) -> torch.Tensor:
    x, mask = pad_sequences(chunks, device=next(model.parameters()).device)
    z = model(x, mask).float().cpu()
    return F.normalize(z, dim=-1)
