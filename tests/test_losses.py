"""Losses against hand-computed values and a brute-force loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from wealy_cli.model.losses import clews_loss, cosine_similarity_matrix, make_loss, ntxent_loss, triplet_loss
from wealy_cli.model.options import LossOptions

torch.set_num_threads(1)


def unit(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1)


def test_ntxent_hand_computed():
    z = unit(0, 90, 180, 270) * torch.tensor([[1.0], [2.0], [3.0], [0.5]], dtype=torch.float64)  # scale is irrelevant
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    # Every anchor: positive at cos 0, negatives at cos 0 and cos -1.
    assert ntxent_loss(z, labels, ids, 1.0).item() == pytest.approx(math.log(2 + math.exp(-1)), rel=1e-6)
    assert ntxent_loss(z, labels, ids, 0.5).item() == pytest.approx(math.log(2 + math.exp(-2)), rel=1e-6)


def test_triplet_batch_hard_hand_computed():
    z = unit(0, 60, 120, 30)
    labels, ids = torch.tensor([0, 0, 0, 1]), torch.arange(4)
    d30 = 1 - math.cos(math.pi / 6)
    # anchor 0: farthest positive 120° (1.5), nearest negative 30°; anchor 1: 0.5 vs d30;
    # anchor 2: 1.5 vs 1.0; anchor 3 has no positive.
    expected = ((1.5 - d30 + 0.1) + (0.5 - d30 + 0.1) + (1.5 - 1.0 + 0.1)) / 3
    assert triplet_loss(z, labels, ids, 0.1).item() == pytest.approx(expected, rel=1e-6)
    # "First positive" mining would give a different value: anchor 0 with 60° → 0.5.
    first = ((0.5 - d30 + 0.1) + (0.5 - d30 + 0.1) + (1.5 - 1.0 + 0.1)) / 3
    assert triplet_loss(z, labels, ids, 0.1).item() != pytest.approx(first, rel=1e-3)


def test_clews_hand_computed():
    z = unit(0, 90, 180, 270)
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    # Every anchor: one positive at distance 1; negatives at distances 1 and 2.
    uniform = math.log1p((math.exp(1 - 8 * 1) + math.exp(1 - 8 * 2)) / 2)
    assert clews_loss(z, labels, ids).item() == pytest.approx(1 + 0.5 * uniform, rel=1e-6)


def _reference(kind: str, z: torch.Tensor, labels: list[int], ids: list[int], cfg: LossOptions) -> float:
    """Plain Python loops over pairs."""
    n = len(labels)
    zn = [[float(v) for v in row / row.norm()] for row in z]
    cos = [[sum(a * b for a, b in zip(zn[i], zn[j])) for j in range(n)] for i in range(n)]
    per_anchor = []
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i] and ids[j] != ids[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        if kind == "ntxent" and pos:
            num = sum(math.exp(cos[i][j] / cfg.temperature) for j in pos)
            den = sum(math.exp(cos[i][j] / cfg.temperature) for j in pos + neg)
            per_anchor.append(-math.log(num / den))
        elif kind == "triplet" and pos and neg:
            dp = max(1 - cos[i][j] for j in pos)
            dn = min(1 - cos[i][j] for j in neg)
            per_anchor.append(max(0.0, dp - dn + cfg.margin))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("kind", ["ntxent", "triplet"])
def test_losses_match_loop_reference_with_repeated_versions(kind):
    torch.manual_seed(1)
    labels = [0, 0, 1, 1, 1, 2, 2, 3, 0, 4]
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 0, 8]  # version 0 drawn twice, clique 4 has no positive
    z = torch.randn(10, 6, dtype=torch.float64)
    cfg = LossOptions(loss=kind, temperature=0.3, margin=0.2)
    got = make_loss(cfg)(cosine_similarity_matrix(z), torch.tensor(labels), torch.tensor(ids)).item()
    assert got == pytest.approx(_reference(kind, z, labels, ids, cfg), rel=1e-9)


@pytest.mark.parametrize("kind", ["ntxent", "triplet", "clews"])
def test_gradients_finite_even_with_degenerate_rows(kind):
    torch.manual_seed(0)
    z = torch.randn(8, 5)
    z[3] = 0.0  # a zero embedding (e.g. an empty sequence)
    z[4] = z[5] * 1e4  # huge norm
    z.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    loss = make_loss(LossOptions(loss=kind, temperature=0.05))(cosine_similarity_matrix(z), labels, torch.arange(8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


def test_no_positive_in_batch_gives_zero_with_graph():
    z = torch.randn(4, 3, requires_grad=True)
    loss = ntxent_loss(z, torch.arange(4), torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_bad_loss_options():
    with pytest.raises(ValidationError, match="loss"):
        LossOptions(loss="hinge")
    with pytest.raises(ValidationError, match="temperature"):
        LossOptions(temperature=0)
