"""Late-interaction song similarity: songs compared row by row, not as one pooled vector.

Each song is a set of L2-normalised row vectors (one per sung token, see ``model/network.py``
``LateInteraction``). For songs A and B:

    m_A[i]   = max_j cos(a_i, b_j)                  the best match in B of each row of A
    s(A → B) = mean of the ``fraction`` × |A| largest m_A[i]    (at least one row)
    score    = ½ (s(A → B) + s(B → A)),     distance = 1 − score

Averaging only the best-matching fraction of a song's rows lets a version that sings part of
the lyrics (an excerpt, a medley, a quote) match the song it comes from; the symmetric mean keeps
a short song from matching everything. ``fraction`` 1 is the plain mean of best matches
(ColBERT's MaxSim, averaged both ways).
"""

from __future__ import annotations

import math

import torch


def top_fraction_mean(values: torch.Tensor, valid: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the ``ceil(fraction · n)`` largest valid entries along the last axis, n the valid
    count (at least one entry; 0 where there is none). ``valid`` broadcasts against ``values``."""
    valid = valid.expand_as(values)
    n = valid.sum(-1)
    k = torch.clamp(torch.ceil(fraction * n.to(values.dtype)).to(torch.long), min=1)
    ordered = values.masked_fill(~valid, -math.inf).sort(dim=-1, descending=True).values
    ordered = ordered.masked_fill(torch.isinf(ordered), 0.0)
    running = ordered.cumsum(-1)
    picked = running.gather(-1, (k - 1).clamp(max=values.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(n > 0, picked / k.to(values.dtype), torch.zeros_like(picked))


def late_similarity(a: torch.Tensor, a_valid: torch.Tensor, b: torch.Tensor, b_valid: torch.Tensor,
                    fraction: float) -> torch.Tensor:
    """(na, nb) symmetric late-interaction scores of padded row sets a (na, Ra, d) and b (nb, Rb, d)
    with validity masks (na, Ra) and (nb, Rb)."""
    sims = torch.einsum("ird,jcd->ijrc", a, b)  # (na, nb, Ra, Rb)
    best_in_b = sims.masked_fill(~b_valid[None, :, None, :], -math.inf).amax(-1)  # (na, nb, Ra)
    best_in_a = sims.masked_fill(~a_valid[:, None, :, None], -math.inf).amax(-2)  # (na, nb, Rb)
    a_to_b = top_fraction_mean(best_in_b, a_valid[:, None, :], fraction)
    b_to_a = top_fraction_mean(best_in_a, b_valid[None, :, :], fraction)
    return (a_to_b + b_to_a) / 2


def late_distances(a: torch.Tensor, a_valid: torch.Tensor, b: torch.Tensor, b_valid: torch.Tensor,
                   fraction: float) -> torch.Tensor:
    """1 − ``late_similarity``."""
    return 1.0 - late_similarity(a, a_valid, b, b_valid, fraction)


def late_similarity_rows(x: torch.Tensor, valid: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, B) symmetric late-interaction scores of a batch of padded row sets x (B, T, d), as
    ``late_similarity(x, valid, x, valid)`` but in O((Σ rows)²) memory instead of O(B² T²):
    the form training backpropagates through. A song without rows scores 0 with every song."""
    counts = valid.sum(1).tolist()
    flat = x[valid]  # (N, d), song by song
    sims = flat @ flat.T
    bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
    n = len(counts)
    zero = sims.new_zeros(sims.shape[0])
    best = torch.stack([sims[:, bounds[j]:bounds[j + 1]].amax(1) if counts[j] else zero for j in range(n)], dim=1)
    rows = [best[bounds[i]:bounds[i + 1]].T for i in range(n)]  # per song i: (B, n_i) best matches in each song
    directional = torch.stack([top_fraction_mean(r, torch.ones_like(r, dtype=torch.bool), fraction) if counts[i]
                               else best.new_zeros(n) for i, r in enumerate(rows)])
    return (directional + directional.T) / 2
