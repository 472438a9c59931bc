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


def test_the_batch_form_equals_the_tile_form_and_has_gradients():
    from wealy_cli.ranking.late import late_similarity_rows

    rng = np.random.default_rng(2)
    songs = [unit_rows(rng, n) for n in (5, 0, 3, 8)]  # one song without sung rows
    x, mask = pad_sequences(songs, min_length=1)
    x = x.double().requires_grad_(True)
    batch = late_similarity_rows(x, mask, 0.5)
    tiles = late_similarity(x, mask, x, mask, 0.5)
    torch.testing.assert_close(batch, tiles)
    assert batch[1].abs().sum() == 0 and batch[:, 1].abs().sum() == 0  # nothing sung: scores 0
    batch.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- a late checkpoint end to end

PROMPT, SOT, TIMESTAMP = 3, 50258, 50400  # prompt rows, a special token, a timestamp token


def _late_setup(root):
    """A Whisper-like store (window tokens recorded: prompt, text and special tokens) of 12 songs in
    4 cliques, one of them without a single sung token, and a saved late-interaction checkpoint."""
    from wealy_cli.core.store import StoreWriter
    from wealy_cli.model.network import ModelConfig, build_model, save_weights

    rng = np.random.default_rng(1)
    dim = 6
    centres = rng.standard_normal((4, dim))
    items, sung = {}, {}
    with StoreWriter(root / "features", dim, settings={"test": True}) as writer:
        for i in range(12):
            clique = f"c{i % 4}"
            n_text = 0 if i == 5 else int(rng.integers(2, 9))
            tokens = [SOT] * PROMPT + list(rng.integers(0, 50000, n_text)) + [TIMESTAMP, SOT]
            mask = np.array([False] * PROMPT + [True] * n_text + [False, False])
            rows = rng.standard_normal((len(tokens), dim)) + 3 * centres[i % 4] * mask[:, None]
            key = f"{clique}/v{i}"
            items[key], sung[key] = rows.astype(np.float16), mask
            writer.add(key, items[key], clique=clique, version=f"v{i}",
                       windows=[{"tokens": [int(t) for t in tokens], "prompt_tokens": PROMPT}])
    (root / "split.csv").write_text("clique,version,path\n" + "".join(f"{k.replace('/', ',')},x.mp3\n" for k in items))
    cfg = ModelConfig(input_channels=dim, arch="late", zdim=4, dropout=0.0, late_fraction=0.5)
    model = build_model(cfg)
    torch.manual_seed(0)
    model.initialise(torch.randn(50, dim))  # a centre and a PCA start: not the identity
    save_weights(root / "run" / "best", model, cfg)
    return items, sung, model


def test_evaluate_distances_and_search_score_a_late_checkpoint_row_by_row(tmp_path):
    """`distances` of a late checkpoint equal the loop reference on the sung rows, projected by
    hand; a song without sung rows scores 0 with every song; `search --key` ranks as its row."""
    import json

    from helpers.cli import run_wealy

    from wealy_cli.ranking.matrixfile import read_matrix

    items, sung, model = _late_setup(tmp_path)
    data = ["--checkpoint", tmp_path / "run", "--store", tmp_path / "features", "--dataset", "csv",
            "--metadata", tmp_path / "split.csv", "--split", "test"]
    proc = run_wealy("-q", "distances", *data, "-o", tmp_path / "d.npz")
    assert proc.returncode == 0, proc.stderr
    matrix = read_matrix(tmp_path / "d.npz")
    weight = model.proj.weight.detach().double().numpy()
    bias, centre = model.proj.bias.detach().double().numpy(), model.centre.double().numpy()

    def rows_of(key):
        x = items[key].astype(np.float64)[sung[key]]
        y = (x - centre) @ weight.T + bias
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    keys = list(matrix.query_keys)
    for i, a in enumerate(keys):
        for j, b in enumerate(keys):
            if not sung[a].any() or not sung[b].any():
                expected = 1.0
            else:
                expected = 1.0 - reference_score(rows_of(a), rows_of(b), 0.5)
            assert matrix.distances[i, j] == pytest.approx(expected, abs=2e-3), (a, b)
    proc = run_wealy("-q", "evaluate", *data, "--output", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["info"]["distance"].startswith("late interaction")
    # evaluate ranks tile by tile; the same metrics from the dense matrix by the plain definition
    from wealy_cli.ranking.metrics import retrieval_metrics

    dense = retrieval_metrics(matrix.distances.astype(np.float64), matrix.query_cliques, matrix.candidate_cliques,
                              matrix.query_keys, matrix.candidate_keys)
    assert results["metrics"]["map"] == pytest.approx(dense.map, abs=1e-6)
    assert results["metrics"]["arp"] == pytest.approx(dense.arp, abs=1e-4)

    proc = run_wealy("-q", "index", "build", *data[:8], "-o", tmp_path / "index")
    assert proc.returncode == 0, proc.stderr
    query = keys[0]
    proc = run_wealy("-q", "search", tmp_path / "index", "--key", query, "--top", "12", "--probe", "100",
                     "--format", "json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["queries"][0]["results"]
    row = matrix.distances[0]
    assert [h["distance"] for h in hits] == pytest.approx(sorted(row.tolist()), abs=2e-3)
    assert hits[0]["key"] == query


def test_late_training_on_a_store_without_window_tokens_is_one_line_exit_2(tmp_path):
    """--arch late reads sung rows; a store that does not record one token per row (here: no
    windows at all) is refused before training, naming the store and the way out."""
    from helpers.cli import assert_user_error, run_wealy
    from helpers.training import build_separable

    store_dir, csv_path = build_separable(tmp_path, train_cliques=4, val_cliques=2)
    proc = run_wealy("train", "--store", store_dir, "--dataset", "csv", "--metadata", csv_path, "--arch", "late",
                     "--output", tmp_path / "run", "--gpus", "0", "--loader-workers", "0", "--max-epochs", "1",
                     "--batch-size", "4")
    assert_user_error(proc, str(store_dir), "use --rows all")
    assert not (tmp_path / "run" / "best.safetensors").exists()
