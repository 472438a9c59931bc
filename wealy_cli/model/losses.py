"""Contrastive losses on a batch of embeddings with clique labels.

Every loss takes ``z`` (N, D) un-normalised embeddings, ``labels`` (N,) clique ids and ``ids``
(N,) version ids. Pairs: positive = same clique, different version; negative = other clique.
Two rows of the same version (possible when a version is drawn twice) are neither. Distances
are cosine distances, 1 − cos, as in retrieval. Anchors without a positive (or, for the
margin losses, without a negative) are skipped.

- ``ntxent``  (paper default): per anchor −log(Σ_pos e^{s/τ} / Σ_{pos ∪ neg} e^{s/τ}),
  s = cosine similarity, mean over anchors.
- ``triplet``: batch-hard mining: per anchor the farthest positive and the nearest negative,
  max(0, d_ap − d_an + margin), mean over anchors.
- ``clews``: alignment (per anchor mean positive distance) + w · uniformity (per anchor
  log1p(mean over negatives of exp(b − γ·d))).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from wealy_cli.model.options import LossOptions


def pair_masks(labels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives), both (N, N) bool."""
    same_clique = labels[:, None] == labels[None, :]
    same_version = ids[:, None] == ids[None, :]
    return same_clique & ~same_version, ~same_clique


def cosine_similarity_matrix(z: torch.Tensor) -> torch.Tensor:
    # At least fp32 (bf16 autocast embeddings lose too much for exp(s/τ)).
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    return z @ z.T


def _mean_over(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``keep``; 0 (still attached to the graph) when none is kept."""
    values = torch.where(keep, values, 0.0)  # skipped anchors may hold ±inf
    return values.sum() / keep.sum().clamp(min=1)


def ntxent(sim: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Multi-positive NT-Xent on a similarity matrix (cosines, or late-interaction scores)."""
    pos, neg = pair_masks(labels, ids)
    logits = sim.to(torch.promote_types(sim.dtype, torch.float32)) / temperature
    minus_inf = torch.finfo(logits.dtype).min
    log_pos = torch.where(pos, logits, minus_inf).logsumexp(1)
    log_all = torch.where(pos | neg, logits, minus_inf).logsumexp(1)
    return _mean_over(log_all - log_pos, pos.any(1))


def triplet(sim: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Batch-hard triplet loss on distances 1 − ``sim``."""
    pos, neg = pair_masks(labels, ids)
    dist = 1 - sim
    hardest_pos = torch.where(pos, dist, -torch.inf).amax(1)
    hardest_neg = torch.where(neg, dist, torch.inf).amin(1)
    keep = pos.any(1) & neg.any(1)
    per_anchor = F.relu(torch.where(keep, hardest_pos - hardest_neg, 0.0) + margin)
    return _mean_over(per_anchor, keep)


def clews(sim: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, gamma: float = 8.0, b: float = 1.0,
          uniformity_weight: float = 0.5) -> torch.Tensor:
    """CLEWS-style alignment + uniformity on distances 1 − ``sim``."""
    pos, neg = pair_masks(labels, ids)
    dist = 1 - sim
    align = (dist * pos).sum(1) / pos.sum(1).clamp(min=1)
    uniform = ((b - gamma * dist).exp() * neg).sum(1) / neg.sum(1).clamp(min=1)
    return _mean_over(align, pos.any(1)) + uniformity_weight * _mean_over(uniform.log1p(), neg.any(1))


def ntxent_loss(z: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    return ntxent(cosine_similarity_matrix(z), labels, ids, temperature)


def triplet_loss(z: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    return triplet(cosine_similarity_matrix(z), labels, ids, margin)


def clews_loss(z: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, gamma: float = 8.0, b: float = 1.0,
               uniformity_weight: float = 0.5) -> torch.Tensor:
    return clews(cosine_similarity_matrix(z), labels, ids, gamma, b, uniformity_weight)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(opts: LossOptions) -> LossFn:
    """``loss(similarity, labels, ids) -> scalar`` for the configured type; the similarity matrix
    is the cosines of pooled embeddings or the late-interaction scores of row sets."""
    if opts.loss == "ntxent":
        return lambda sim, labels, ids: ntxent(sim, labels, ids, opts.temperature)
    if opts.loss == "triplet":
        return lambda sim, labels, ids: triplet(sim, labels, ids, opts.margin)
    return lambda sim, labels, ids: clews(sim, labels, ids, opts.clews_gamma, opts.clews_bias, opts.clews_weight)
