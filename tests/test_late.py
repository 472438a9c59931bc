"""Late interaction: the song score against a plain loop reference, the row model's start, the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wealy_cli.core.layers import pad_sequences
from wealy_cli.ranking.late import late_distances, late_similarity, top_fraction_mean

torch.set_num_threads(1)


def reference_score(a: np.ndarray, b: np.ndarray, fraction: float) -> float:
    """Song by song, row by row, in float64: ½ (s(a→b) + s(b→a)), s the mean of the best
    ceil(fraction · n) of a's rows' best cosines in b."""
    def one_way(x: np.ndarray, y: np.ndarray) -> float:
        best = sorted((max(float(xi @ yj) for yj in y) for xi in x), reverse=True)
        k = max(1, math.ceil(fraction * len(best)))
        return sum(best[:k]) / k
    return (one_way(a, b) + one_way(b, a)) / 2


def unit_rows(rng, n: int, d: int = 6) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)  # float32-exact


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.3, 0.01])
def test_late_similarity_matches_the_loop_reference(fraction):
    rng = np.random.default_rng(0)
    songs = [unit_rows(rng, n) for n in (1, 3, 7, 4, 10)]
    x, mask = pad_sequences(songs)
    x = x.double()
    got = late_similarity(x, mask, x, mask, fraction).numpy()
    want = np.array([[reference_score(a, b, fraction) for b in songs] for a in songs])
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got, got.T, atol=1e-12)  # symmetric by construction
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)  # a song matches itself perfectly
    # a tile against another tile gives the same numbers as the whole matrix
    a, am = pad_sequences(songs[:2])
    b, bm = pad_sequences(songs[2:])
    np.testing.assert_allclose(late_distances(a.double(), am, b.double(), bm, fraction).numpy(),
                               1 - want[:2, 2:], atol=1e-12)


def test_an_excerpt_scores_higher_with_a_top_fraction():
    """A version that sings half the song: with fraction 0.5 only its matched half counts."""
    rng = np.random.default_rng(1)
    song = unit_rows(rng, 20)
    excerpt, other = song[:10], unit_rows(rng, 20)
    full = reference_score(song, excerpt, 1.0)
    half = reference_score(song, excerpt, 0.5)
    assert half == pytest.approx(1.0) and full < half
    assert reference_score(song, other, 0.5) < half


def test_top_fraction_mean_by_hand():
    values = torch.tensor([[3.0, 1.0, 2.0, 9.0]])
    valid = torch.tensor([[True, True, True, False]])
    assert top_fraction_mean(values, valid, 1.0).item() == pytest.approx(2.0)
    assert top_fraction_mean(values, valid, 0.5).item() == pytest.approx(2.5)  # ceil(1.5) = 2 best: 3, 2
    assert top_fraction_mean(values, valid, 0.1).item() == pytest.approx(3.0)
    assert top_fraction_mean(values, torch.zeros_like(valid), 0.5).item() == 0.0
