"""Neural-network pieces shared by the CLEWS and WEALY models and the code that feeds them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class GeMPool(nn.Module):
    """Generalised mean (mean_n clamp(h, eps)^p)^(1/p) over the last axes, with a learned exponent
    p = 1 + softplus(θ) per channel, initialised at ``init``. ``p`` holds θ, shape (1, C, 1), as
    in both original codes (so their state dicts load).

    ``forward(h, valid)``: h (B, C, ...) is pooled over every position after the channel axis;
    with ``valid`` (B, N) only the valid positions count (WEALY's padded sequences). The sum runs
    in float32: x^p overflows bfloat16/float16 quickly."""

    def __init__(self, channels: int = 1, init: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1, channels, 1), math.log(math.exp(init - 1) - 1)))
        self.eps = eps

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        h = h.flatten(start_dim=2).float()  # (B, C, N)
        p = 1 + F.softplus(self.p.float())  # (1, C, 1)
        powered = h.clamp(min=self.eps).pow(p)
        if valid is None:
            return powered.mean(-1).pow(1 / p.squeeze(-1))
        # where(), not a product: a padded position must not leak even if it holds NaN or Inf.
        keep = valid[:, None, :]
        mean = torch.where(keep, powered, 0.0).sum(-1) / keep.sum(-1).clamp(min=1)
        # An empty sequence gives mean 0; the clamp keeps pow and its gradient finite.
        return mean.clamp(min=self.eps ** 3).pow(1 / p.squeeze(-1))


def pad_sequences(sequences: Sequence[np.ndarray | torch.Tensor], min_length: int = 0,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sequences (T_i, d) → zero-padded (n, T, d) of ``dtype`` (float32 by default) and its
    validity mask (n, T), T the longest length (at least ``min_length``)."""
    longest = max([min_length] + [len(s) for s in sequences])
    x = torch.zeros(len(sequences), longest, sequences[0].shape[1], dtype=dtype)
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool)
    for i, s in enumerate(sequences):  # the copy converts to ``dtype`` (float16 → float32 exactly)
        x[i, :len(s)] = torch.as_tensor(np.asarray(s) if isinstance(s, np.ndarray) else s)
        mask[i, :len(s)] = True
    return x.to(device) if device is not None else x, mask.to(device) if device is not None else mask
