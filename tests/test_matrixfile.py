"""Distance-matrix files: every format round-trips; the original pickle layout is read safely."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from wealy_cli.ranking.matrixfile import DistanceMatrix, MatrixFileError, read_matrix, write_matrix


def _matrix(seed: int = 0) -> DistanceMatrix:
    rng = np.random.default_rng(seed)
    q_keys = ["10/a", "10/b", "22/x"]
    c_keys = ["10/a", "10/b", "22/x", "22/y", "35/é"]
    return DistanceMatrix(rng.random((3, 5)).astype(np.float32), q_keys, c_keys,
                          [k.split("/")[0] for k in q_keys], [k.split("/")[0] for k in c_keys],
                          {"model": "test", "topk": 3, "nested": {"a": [1, 2]}})


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5", ".pkl"])
def test_roundtrip(tmp_path, suffix):
    m = _matrix()
    path = write_matrix(tmp_path / f"m{suffix}", m)
    back = read_matrix(path)
    np.testing.assert_array_equal(back.distances, m.distances)
    assert back.distances.dtype == np.float32
    assert (back.query_keys, back.candidate_keys) == (m.query_keys, m.candidate_keys)
    assert (back.query_cliques, back.candidate_cliques) == (m.query_cliques, m.candidate_cliques)
    assert back.metadata == m.metadata
    assert [p.name for p in tmp_path.iterdir()] == [f"m{suffix}"]  # no temporary left behind


def test_format_is_detected_from_content_not_suffix(tmp_path):
    path = write_matrix(tmp_path / "m.bin", _matrix(), format="hdf5")
    assert read_matrix(path).shape == (3, 5)


def test_original_layout_with_shuffled_references(tmp_path):
    """The original tools' pickle: int cliques/versions, references in any order, float64."""
    d = np.arange(6, dtype=np.float64).reshape(2, 3)
    original = {"distance_matrix": d,
                "query_references": [{"clique": 7, "version": 2, "matrix_row": 1},
                                     {"clique": np.int64(5), "version": 1, "matrix_row": 0}],
                "candidate_references": [{"clique": 5, "version": 1, "matrix_col": 0},
                                         {"clique": 7, "version": 9, "matrix_col": 2},
                                         {"clique": 7, "version": 2, "matrix_col": 1}],
                "metadata": {"checkpoint": "x", "topk_distance": np.int64(3)}}
    path = tmp_path / "clews.pkl"
    path.write_bytes(pickle.dumps(original))
    m = read_matrix(path)
    assert m.query_keys == ["5/1", "7/2"] and m.candidate_keys == ["5/1", "7/2", "7/9"]
    assert m.query_cliques == ["5", "7"] and m.candidate_cliques == ["5", "7", "7"]
    assert m.distances[1, 2] == 5.0 and m.metadata["topk_distance"] == 3


def test_inconsistent_matrices_are_user_errors(tmp_path):
    with pytest.raises(MatrixFileError, match="query_keys has 2 entries"):
        DistanceMatrix(np.zeros((3, 3)), ["a/1", "a/2"], ["a/1", "a/2", "b/1"], ["a", "a"], ["a", "a", "b"])
    with pytest.raises(MatrixFileError, match="appears more than once"):
        DistanceMatrix.square(np.zeros((2, 2)), ["a/1", "a/1"], ["a", "a"])
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"distance_matrix": np.zeros((2, 2)),
                                  "query_references": [{"clique": 1, "version": 1, "matrix_row": 0}],
                                  "candidate_references": []}))
    with pytest.raises(MatrixFileError, match="bad.pkl: expected 2 references"):
        read_matrix(bad)
    with pytest.raises(MatrixFileError, match="not found"):
        read_matrix(tmp_path / "missing.npz")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(MatrixFileError, match="not a distance-matrix file"):
        read_matrix(text)
    with pytest.raises(MatrixFileError, match="unknown distance-matrix suffix"):
        write_matrix(tmp_path / "m.csv", _matrix())


def test_npz_with_object_arrays_is_refused(tmp_path):
    """np.load with allow_pickle=False: an object array (a hidden pickle) is not executed."""
    path = tmp_path / "obj.npz"
    np.savez(path, distances=np.zeros((1, 1)), query_keys=np.array(["a/1"], dtype=object),
             candidate_keys=np.array(["a/1"]), query_cliques=np.array(["a"]), candidate_cliques=np.array(["a"]))
    with pytest.raises(MatrixFileError, match="obj.npz"):
        read_matrix(path)
