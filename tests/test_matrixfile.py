"""Distance-matrix files: every format round-trips; the original pickle layout is read safely."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from wealy_cli.core.errors import UserError
from wealy_cli.ranking.matrixfile import (
    DistanceMatrix,
    MatrixFileError,
    MatrixWriter,
    check_disk_space,
    open_rows,
    read_matrix,
    write_matrix,
)


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


# ---------------------------------------------------------------- untrusted files

def _labels(n: int, prefix: str) -> tuple[list[str], list[str]]:
    keys = [f"{prefix}{i // 2}/{i}" for i in range(n)]
    return keys, [k.split("/")[0] for k in keys]


def _write_raw(path, fmt: str, distances) -> None:
    """A matrix file written directly (not through write_matrix), holding exactly ``distances``."""
    d = np.asarray(distances)
    (qk, qc), (ck, cc) = _labels(d.shape[0], "q"), _labels(d.shape[1] if d.ndim > 1 else 1, "q")
    if fmt == "npz":
        np.savez(path, distances=d, query_keys=np.array(qk), candidate_keys=np.array(ck),
                 query_cliques=np.array(qc), candidate_cliques=np.array(cc))
    elif fmt == "h5":
        with h5py.File(path, "w") as fh:
            fh.create_dataset("distances", data=d.astype(object) if d.dtype.kind == "U" else d,
                              dtype=h5py.string_dtype() if d.dtype.kind == "U" else None)
            for name, values in (("query_keys", qk), ("candidate_keys", ck), ("query_cliques", qc),
                                 ("candidate_cliques", cc)):
                fh.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
    else:
        path.write_bytes(pickle.dumps({
            "distance_matrix": d,
            "query_references": [{"clique": c, "version": k.split("/")[1], "matrix_row": i}
                                 for i, (k, c) in enumerate(zip(qk, qc))],
            "candidate_references": [{"clique": c, "version": k.split("/")[1], "matrix_col": i}
                                     for i, (k, c) in enumerate(zip(ck, cc))]}))


FORMATS = ["npz", "h5", "pkl"]
_FINITE = np.arange(6, dtype=np.float64).reshape(2, 3)
REFUSED_VALUES = {  # name → (distances, words of the refusal)
    "all NaN": (np.full((2, 3), np.nan), "holds NaN (first at row 0, column 0)"),
    "one NaN": (np.where(np.arange(6).reshape(2, 3) == 4, np.nan, _FINITE), "holds NaN (first at row 1, column 1)"),
    "all +inf": (np.full((2, 3), np.inf), "has no finite entry"),
    "-inf": (np.where(np.arange(6).reshape(2, 3) == 2, -np.inf, _FINITE), "holds -inf (first at row 0, column 2)"),
    "complex": (_FINITE + 1j, "not complex numbers"),
    "strings": (np.array([["0.1", "a", "b"], ["c", "d", "e"]]), "not strings"),
    "booleans": (_FINITE > 2, "not booleans"),
    "beyond float32": (np.where(np.arange(6).reshape(2, 3) == 5, 1e300, _FINITE), "beyond float32's range"),
    "1-D": (np.arange(3.0), "must be 2-D"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(REFUSED_VALUES))
def test_the_same_values_are_refused_in_every_format(tmp_path, fmt, case):
    distances, words = REFUSED_VALUES[case]
    path = tmp_path / f"m.{fmt}"
    _write_raw(path, fmt, distances)
    with pytest.raises(MatrixFileError) as info:
        read_matrix(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_some_inf_and_integers_are_accepted_in_every_format(tmp_path, fmt):
    """+inf entries (a query's own, 'never a match') stay +inf; integers become float32."""
    with_inf = np.where(np.eye(2, 3, dtype=bool), np.inf, _FINITE)
    for name, distances in (("inf", with_inf), ("int", np.arange(6, dtype=np.int64).reshape(2, 3))):
        path = tmp_path / f"{name}.{fmt}"
        _write_raw(path, fmt, distances)
        back = read_matrix(path)
        assert back.distances.dtype == np.float32
        np.testing.assert_array_equal(back.distances, distances.astype(np.float32))
        assert back.query_keys == ["q0/0", "q0/1"]


def test_truncated_npz_is_a_user_error(tmp_path):
    good = write_matrix(tmp_path / "good.npz", _matrix())
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(MatrixFileError, match=f"cut{cut}.npz: unreadable .npz"):
            read_matrix(bad)


def _npz_with_member(path, name: str, header: dict, data: bytes, compression=zipfile.ZIP_STORED) -> None:
    """A real matrix plus one member replaced by a hand-written .npy (any header, any data)."""
    buffer = io.BytesIO()
    write_matrix(path, _matrix())
    with zipfile.ZipFile(path) as src:
        members = {i.filename: src.read(i.filename) for i in src.infolist()}
    text = repr(header).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    buffer.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data)
    members[f"{name}.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as out:
        for member, content in members.items():
            out.writestr(member, content, compress_type=compression if member == f"{name}.npy" else zipfile.ZIP_STORED)


def test_npz_declaring_a_huge_array_is_refused_before_reading(tmp_path):
    """A header asking for 100000×100000 float64 (74.5 GiB) over 16 bytes of data."""
    path = tmp_path / "huge.npz"
    _npz_with_member(path, "distances", {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)},
                     b"\0" * 16)
    with pytest.raises(MatrixFileError, match=r"huge.npz: refused: its arrays declare 80000\d+ bytes \('distances'"):
        read_matrix(path)


def test_npz_compression_bomb_is_refused_and_unread_members_are_ignored(tmp_path):
    """savez_compressed of 256 MB of zeros is a ~250 KB file: more than memory_limit allows."""
    zeros = np.zeros((8192, 8192), np.float32)
    bomb = tmp_path / "bomb.npz"
    _npz_with_member(bomb, "distances", {"descr": "<f4", "fortran_order": False, "shape": zeros.shape},
                     zeros.tobytes(), zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1_000_000
    refusal = r"bomb.npz: refused: its arrays declare \d+ bytes \('distances': 268435456\)"
    with pytest.raises(MatrixFileError, match=refusal):
        read_matrix(bomb)
    extra = tmp_path / "extra.npz"  # the same bomb under a name wealy does not read: harmless
    _npz_with_member(extra, "junk", {"descr": "<f4", "fortran_order": False, "shape": zeros.shape},
                     zeros.tobytes(), zipfile.ZIP_DEFLATED)
    assert read_matrix(extra).shape == (3, 5)
    bz2 = tmp_path / "bz2.npz"
    _npz_with_member(bz2, "distances", {"descr": "<f4", "fortran_order": False, "shape": (3, 5)},
                     np.ones((3, 5), np.float32).tobytes(), zipfile.ZIP_BZIP2)
    with pytest.raises(MatrixFileError, match="bz2.npz: 'distances' is compressed with zip method 12"):
        read_matrix(bz2)


def test_labels_and_metadata_of_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    keys = np.array(["a/1", "a/2"])
    np.savez(path, distances=np.ones((2, 2)), query_keys=np.array([["a/1", "a/2"]]), candidate_keys=keys,
             query_cliques=np.array(["a", "a"]), candidate_cliques=np.array(["a", "a"]))
    with pytest.raises(MatrixFileError, match=r"m.npz: 'query_keys' must be a 1-D list of labels, got shape \(1, 2\)"):
        read_matrix(path)
    np.savez(path, distances=np.ones((2, 2)), query_keys=keys, candidate_keys=keys,
             query_cliques=np.array([0.5, 1.5]), candidate_cliques=np.array(["a", "a"]))
    with pytest.raises(MatrixFileError, match="'query_cliques' must hold strings or integers, not values"):
        read_matrix(path)
    deep = "[" * 100_000 + "]" * 100_000
    np.savez(path, distances=np.ones((2, 2)), query_keys=np.array(["a/1", "a/2"]),
             candidate_keys=np.array(["a/1", "a/2"]), query_cliques=np.array(["a", "a"]),
             candidate_cliques=np.array(["a", "a"]), metadata=np.array(deep))
    with pytest.raises(MatrixFileError, match="m.npz: metadata nests too deeply"):
        read_matrix(path)
    np.savez(path, distances=np.ones((2, 2)), query_keys=np.array(["a/1", "a/2"]),
             candidate_keys=np.array(["a/1", "a/2"]), query_cliques=np.array(["a", "a"]),
             candidate_cliques=np.array(["a", "a"]), metadata=np.array(["{}", "{}"]))
    with pytest.raises(MatrixFileError, match="'metadata' must be one JSON string"):
        read_matrix(path)


def test_hdf5_structure_is_checked_before_reading(tmp_path):
    good = write_matrix(tmp_path / "good.h5", _matrix())

    def variant(name: str, change) -> Path:
        path = tmp_path / f"{name}.h5"
        shutil.copy(good, path)
        with h5py.File(path, "a") as fh:
            change(fh)
        return path

    def replace(name: str, make):
        def change(fh):
            del fh[name]
            make(fh)
        return change

    cases = {
        "group": (replace("distances", lambda fh: fh.create_group("distances")),
                  "'distances' is a group, not a dataset"),
        "softlink": (replace("distances", lambda fh: fh.__setitem__("distances", h5py.SoftLink("/query_keys"))),
                     "'distances' is a SoftLink"),
        "extlink": (replace("query_keys",
                            lambda fh: fh.__setitem__("query_keys", h5py.ExternalLink(good, "/query_keys"))),
                    "'query_keys' is a ExternalLink"),
        "external": (replace("distances", lambda fh: fh.create_dataset(
            "distances", shape=(3, 5), dtype="f4", external=[(str(tmp_path / "raw.bin"), 0, 60)])),
            "'distances' keeps its data in other files"),
        "empty": (replace("distances", lambda fh: fh.create_dataset("distances", data=h5py.Empty("f4"))),
                  "'distances' holds no data"),
        "sparse": (replace("distances", lambda fh: fh.create_dataset("distances", shape=(50_000, 50_000), dtype="f8",
                                                                     chunks=(1000, 1000))),
                   "('distances': 20000000000), more than a"),
        "strings": (replace("distances", lambda fh: fh.create_dataset(
            "distances", data=np.full((3, 5), "x", dtype=object), dtype=h5py.string_dtype())),
            "'distances' must hold real numbers (integers or floats), not strings"),
        "metadata": (lambda fh: fh.attrs.__setitem__("metadata", np.array(["{}", "{}"], dtype=object)),
                     "the 'metadata' attribute must be one string"),
        "keys2d": (replace("query_keys", lambda fh: fh.create_dataset("query_keys", data=np.zeros((3, 2)))),
                   "'query_keys' must be a 1-D list of labels"),
    }
    (tmp_path / "raw.bin").write_bytes(np.ones(15, np.float32).tobytes())
    for name, (change, words) in cases.items():
        path = variant(name, change)
        with pytest.raises(MatrixFileError) as info:
            read_matrix(path)
        assert str(info.value).startswith(f"{path}: ") and words in str(info.value), (name, str(info.value))


def test_pickled_nesting_and_sharing_are_refused(tmp_path):
    """A 100,000-deep nested list as the matrix or as metadata (RecursionError before), and a
    metadata dict whose keys are tuples (not JSON)."""
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    refs = {"query_references": [{"clique": 1, "version": 1, "matrix_row": 0}],
            "candidate_references": [{"clique": 1, "version": 1, "matrix_col": 0}]}
    cases = {"matrix": ({"distance_matrix": deep, **refs}, "containers nest more than 100 deep"),
             "metadata": ({"distance_matrix": np.ones((1, 1)), **refs, "metadata": {"x": deep}},
                          "containers nest more than 100 deep"),
             "tuplekeys": ({"distance_matrix": np.ones((1, 1)), **refs, "metadata": {(1, 2): 3}},
                           "'metadata' cannot be read as JSON-like data"),
             "ragged": ({"distance_matrix": [[1.0, 2.0], [3.0]], **refs}, "'distance_matrix' is not an array"),
             "arraymeta": ({"distance_matrix": np.ones((1, 1)), **refs, "metadata": np.array([1, 2])}, None),
             "nanindex": ({"distance_matrix": np.ones((1, 1)), **refs,
                           "query_references": [{"clique": 1, "version": 1, "matrix_row": float("nan")}]},
                          "reference 0 has a non-integer matrix_row")}
    for name, (obj, words) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=4) if name not in ("matrix", "metadata") else _deep_pickle(obj))
        if words is None:  # metadata that is not a dict is kept under "value"
            assert read_matrix(path).metadata == {"value": [1, 2]}
            continue
        with pytest.raises(UserError) as info:
            read_matrix(path)
        assert str(info.value).startswith(f"{path}: ") and words in str(info.value), (name, str(info.value))


def _deep_pickle(obj) -> bytes:
    """pickle.dumps recurses; write deep nesting with a raised limit in a thread with a big stack."""
    import sys
    import threading

    out: list[bytes] = []

    def run() -> None:
        sys.setrecursionlimit(1_000_000)
        out.append(pickle.dumps(obj, protocol=4))

    threading.stack_size(512 * 2**20)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    threading.stack_size(0)
    return out[0]


# ---------------------------------------------------------------- the real CLI, once per file kind


def _crafted(tmp_path, kind: str) -> Path:
    path = tmp_path / f"{kind}.{kind.split('-')[0]}"
    if kind == "npz-truncated":
        data = write_matrix(tmp_path / "full.npz", _matrix()).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "npz-strings":
        _write_raw(path, "npz", REFUSED_VALUES["strings"][0])
    elif kind == "h5-group":
        write_matrix(path, _matrix())
        with h5py.File(path, "a") as fh:
            del fh["distances"]
            fh.create_group("distances")
    elif kind == "h5-strings":
        _write_raw(path, "h5", REFUSED_VALUES["strings"][0])
    elif kind == "pkl-nan":
        _write_raw(path, "pkl", REFUSED_VALUES["all NaN"][0])
    elif kind == "pkl-bomb":  # frozenset(range(10**9)) as the matrix
        path.write_bytes(b"\x80\x02}X\x0f\x00\x00\x00distance_matrixc__builtin__\nfrozenset\nc__builtin__\nrange\n"
                         b"J\x00\xca\x9a;\x85R\x85Rs.")
    return path


@pytest.mark.parametrize("kind, words", [
    ("npz-truncated", "unreadable .npz (BadZipFile"), ("npz-strings", "must hold real numbers"),
    ("h5-group", "'distances' is a group"), ("h5-strings", "must hold real numbers"),
    ("pkl-nan", "holds NaN"), ("pkl-bomb", "refused to load: the pickle asks to call builtins.range"),
])
def test_cli_fuse_refuses_crafted_files_with_exit_2_and_one_line(tmp_path, capsys, kind, words):
    from wealy_cli.cli import main

    bad = _crafted(tmp_path, kind)
    good = write_matrix(tmp_path / "good.npz", _matrix())
    out = tmp_path / "out"
    assert main(["fuse", str(good), str(bad), "--alphas", "0,1", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {bad}: ") and words in err
    assert not (out / "fusion_results.csv").exists()

# ---------------------------------------------------------------- row blocks (.h5)


def test_writer_by_row_blocks_in_any_order_round_trips(tmp_path):
    m = _matrix(1)
    rng = np.random.default_rng(0)
    big = DistanceMatrix(rng.random((40, 5)).astype(np.float32), [f"q/{i}" for i in range(40)], m.candidate_keys,
                         ["q"] * 40, m.candidate_cliques, {"model": "x"})
    path = tmp_path / "rows.h5"
    with MatrixWriter(path, big.query_keys, big.candidate_keys, big.query_cliques, big.candidate_cliques,
                      big.metadata) as writer:
        for part in np.array_split(rng.permutation(40), 6):  # scattered rows, any order
            writer.write_rows(part, big.distances[part])
        assert not path.exists()  # built under a temporary name
    back = read_matrix(path)
    np.testing.assert_array_equal(back.distances, big.distances)
    assert back.query_keys == big.query_keys and back.metadata == {"model": "x"}
    with open_rows(path) as rows:
        assert not rows.in_memory and rows.shape == (40, 5)
        pick = np.array([7, 3, 4, 5, 39, 0])
        np.testing.assert_array_equal(rows.rows(pick), big.distances[pick])
    assert [p.name for p in tmp_path.iterdir()] == ["rows.h5"]


def test_open_rows_reads_npz_and_pickle_whole(tmp_path):
    m = _matrix(2)
    for suffix in (".npz", ".pkl"):
        with open_rows(write_matrix(tmp_path / f"m{suffix}", m)) as rows:
            assert rows.in_memory and rows.query_keys == m.query_keys
            np.testing.assert_array_equal(rows.rows([2, 0]), m.distances[[2, 0]])


def test_an_unfinished_or_failed_writer_leaves_nothing_and_keeps_the_old_file(tmp_path):
    m = _matrix(3)
    path = write_matrix(tmp_path / "m.h5", m)
    before = path.read_bytes()
    with pytest.raises(MatrixFileError, match="1 of 3 rows were never written"):
        with MatrixWriter(path, m.query_keys, m.candidate_keys, m.query_cliques, m.candidate_cliques) as w:
            w.write(0, m.distances[:2])
    with pytest.raises(RuntimeError, match="boom"):
        with MatrixWriter(path, m.query_keys, m.candidate_keys, m.query_cliques, m.candidate_cliques) as w:
            w.write(0, m.distances)
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_not_enough_disk_is_refused_before_writing(tmp_path):
    path = tmp_path / "sub" / "huge.h5"
    with pytest.raises(MatrixFileError, match=r"huge\.h5: the distance matrix needs .* GiB of disk"):
        check_disk_space(path, 2**70)
    # a writer for an absurd matrix (10⁸ × 10⁸ float32 = 40 PB) refuses before creating anything
    with pytest.raises(MatrixFileError, match="huge.h5"):
        MatrixWriter(path, range(10**8), range(10**8), range(10**8), range(10**8))
    assert not (tmp_path / "sub").exists()
    check_disk_space(path, 1)  # a small file fits


def test_inconsistent_h5_is_refused_by_open_rows(tmp_path):
    path = write_matrix(tmp_path / "m.h5", _matrix())
    with h5py.File(path, "a") as fh:
        del fh["query_cliques"]
    with pytest.raises(MatrixFileError, match="missing 'query_cliques'"):
        open_rows(path)
    with h5py.File(path, "a") as fh:  # a NaN in a row block is refused when that block is read
        fh["query_cliques"] = np.array(["10", "10", "22"], dtype=object).astype(h5py.string_dtype())
        fh["distances"][1, 2] = np.nan
    with open_rows(path) as rows:
        rows.rows([0])
        with pytest.raises(MatrixFileError, match=r"m\.h5: 'distances' holds NaN \(row 1, column 2\)"):
            rows.rows([2, 1])
