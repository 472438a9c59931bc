"""The restricted unpickler admits plain data and refuses anything that would run code."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from helpers.cli import run_wealy

from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import (
    UnsafePickleError,
    _Budget,
    _scan,
    load_checkpoint,
    memory_limit,
    safe_load,
    safe_loads,
)


class _TouchFile:
    """Unpickling this calls open(path, "w"), creating the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _SystemCall:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_roundtrips_every_protocol(protocol):
    obj = {"m": np.arange(12, dtype=np.float32).reshape(3, 4), "f64": np.float64(0.25), "i": np.int64(7),
           "refs": [{"clique": 1, "version": "a", "matrix_row": 0}], "t": (1, 2.5, None, True),
           "s": {3, 4}, "fs": frozenset({"x"}), "od": collections.OrderedDict(b=2), "raw": b"\x00\x01",
           "u": np.array(["ab", "c"]), "c": 1 + 2j}
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert np.array_equal(back["m"], obj["m"]) and back["m"].dtype == np.float32
    assert back["f64"] == 0.25 and back["i"] == 7 and back["u"].tolist() == ["ab", "c"]
    for key in ("refs", "t", "s", "fs", "od", "raw", "c"):
        assert back[key] == obj[key]


@pytest.mark.parametrize("payload", [_TouchFile, _SystemCall])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, payload, protocol):
    target = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"distance_matrix": payload(str(target))}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        safe_load(bad)
    assert not target.exists()


def test_refusal_names_the_file_and_the_callable(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(_SystemCall(str(tmp_path / "x"))))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(bad)
    assert str(bad) in str(info.value) and "system" in str(info.value)


def test_garbage_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04this is not a pickle")
    with pytest.raises(UserError, match="junk.pkl"):
        safe_load(junk)


def test_cli_refuses_crafted_pickle(tmp_path):
    """Through the real CLI (`wealy fuse` reads the pickle): exit code 2, one-line message, no file."""
    target = tmp_path / "created-by-pickle"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"distance_matrix": _TouchFile(str(target)),
                                  "query_references": [], "candidate_references": []}))
    result = run_wealy("fuse", bad, bad, "--alphas", "0,1", "--output", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "refused to load" in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()


# ---------------------------------------------------------------- crafted files: memory and nesting

P = pickle  # opcode constants: pickle.PROTO, pickle.TUPLE1, ...


def _proto(n: int) -> bytes:
    return P.PROTO + bytes([n])


def _global(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def _binint(n: int) -> bytes:
    return P.BININT + n.to_bytes(4, "little", signed=True)


def _frozenset_range_bomb() -> bytes:
    """frozenset(range(10**9)) written by hand: 48 bytes that the plain unpickler turns into ~40 GB."""
    return (_proto(2) + _global("builtins", "frozenset") + _global("builtins", "range") + _binint(10**9)
            + P.TUPLE1 + P.REDUCE + P.TUPLE1 + P.REDUCE + P.STOP)


def _nested_lists(depth: int) -> bytes:
    """[[[...]]] `depth` deep: each level is an empty list, appended to the one below."""
    return _proto(4) + P.EMPTY_LIST * depth + P.APPEND * (depth - 1) + P.STOP


def _array_state(shape: tuple, dtype: str, raw: bytes | list, protocol: int = 4) -> bytes:
    """numpy's own pickle layout (_reconstruct + BUILD with (version, shape, dtype, fortran, raw)),
    with whatever shape, dtype and data the test wants."""
    class Crafted:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, shape, np.dtype(dtype), False, raw))
    return pickle.dumps({"distance_matrix": Crafted(), "query_references": [], "candidate_references": []},
                        protocol=protocol)


def _dag(levels: int) -> bytes:
    """L0 = [1]; Lk = [Lk-1, Lk-1]: a few bytes per level, 2**levels leaves when walked as a tree."""
    out = _proto(4) + P.EMPTY_LIST + P.BININT1 + b"\x01" + P.APPEND + P.MEMOIZE
    for k in range(1, levels):
        out += P.EMPTY_LIST + P.MARK + P.BINGET + bytes([k - 1]) + P.BINGET + bytes([k - 1]) + P.APPENDS + P.MEMOIZE
    return out + P.STOP


BOMBS = {  # name → (pickle bytes, words the refusal must contain)
    "frozenset(range(10**9))": (_frozenset_range_bomb(), "builtins.range"),
    "memo slot 2**28": (_proto(4) + P.NONE + P.LONG_BINPUT + (2**28).to_bytes(4, "little") + P.STOP, "memo slot"),
    "tuple 10**6 deep as a dict key": (_proto(4) + P.EMPTY_DICT + P.NONE + P.TUPLE1 * 10**6 + P.BININT1 + b"\x01"
                                       + P.SETITEM + P.STOP, "tuples nest more than 100 deep"),
    "tuple depth hidden by BUILD": (_proto(4) + P.EMPTY_DICT + P.NONE + (P.TUPLE1 + P.NONE + P.BUILD) * 10**5
                                    + P.BININT1 + b"\x01" + P.SETITEM + P.STOP, "tuples nest more than 100 deep"),
    "lists 10**5 deep": (_nested_lists(10**5), "nest more than 100 deep"),
    "5 million sets": (_proto(4) + P.MARK + (P.EMPTY_SET + P.MEMOIZE) * 5 * 10**6 + P.LIST + P.STOP,
                       "more than a 10000005-byte file"),
    "BINBYTES8 of 64 GiB": (_proto(4) + P.BINBYTES8 + (2**36).to_bytes(8, "little") + b"x" * 100 + P.STOP,
                            "declares 68719476736 bytes"),
    "74.5 GiB array, 400 KB of data": (_array_state((100000, 100000), "f8", b"\0" * 400_000),
                                       "carries 400000 bytes"),
    "object array of 10**9 slots": (_array_state((10**9,), "O", [1]), "dtype object"),
    "numpy.ndarray called directly": (_proto(2) + _global("numpy", "ndarray") + P.MARK + P.MARK + _binint(10**9)
                                      + P.TUPLE + _global("numpy", "dtype") + P.MARK
                                      + P.SHORT_BINUNICODE + b"\x01O" + P.TUPLE + P.REDUCE + P.TUPLE
                                      + P.REDUCE + P.STOP, "calls numpy.ndarray directly"),
    "2**40 leaves by shared references": (_dag(40), "expand to more than"),
    "a list containing itself": (_proto(4) + P.EMPTY_LIST + P.MEMOIZE + P.BINGET + b"\x00" + P.APPEND + P.STOP,
                                 "reference cycle"),
}

_MEASURE = """
import resource, sys
from wealy_cli.core.safepickle import safe_loads
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    safe_loads(data, "crafted.pkl")
    print("LOADED")
except Exception as err:
    print(type(err).__name__, err)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("name", list(BOMBS))
def test_crafted_pickle_is_refused_within_200_mb(tmp_path, name):
    """Each bomb in its own process (a regression could crash it): refused with a one-line
    UserError, and the peak resident memory grows by less than 200 MB."""
    data, words = BOMBS[name]
    path = tmp_path / "crafted.pkl"
    path.write_bytes(data)
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    message, grown_mb = result.stdout.strip().rsplit("\n", 1)
    assert message.startswith(("UnsafePickleError crafted.pkl: refused", "UserError crafted.pkl: not a readable"))
    assert words in message and "\n" not in message
    assert int(grown_mb) < 200, f"{name}: resident memory grew by {grown_mb} MB"


def test_the_frozenset_bomb_is_tiny():
    assert len(_frozenset_range_bomb()) < 60


def test_real_arrays_pass_the_checks_in_every_layout():
    """numpy's own pickles of C/Fortran order, big-endian, string, empty and 0-d arrays, shared
    twice by reference, in every protocol: values, dtypes (as the plain unpickler gives them: numpy
    turns big-endian data native) and sharing come back."""
    arrays = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "be": np.arange(5, dtype=">i4"),
              "s": np.array([b"ab", b"c"]), "u": np.array(["é", "xyz"]), "empty": np.zeros((0, 3), np.float32),
              "scalar0d": np.array(2.5), "bool": np.array([True, False])}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps({**arrays, "twice": [arrays["f"], arrays["f"]]}, protocol=protocol)
        back, plain = safe_loads(data), pickle.loads(data)  # our own bytes: the plain unpickler is the reference
        for key, value in arrays.items():
            assert back[key].dtype == plain[key].dtype and back[key].shape == value.shape
            assert back[key].flags.f_contiguous == plain[key].flags.f_contiguous
            np.testing.assert_array_equal(back[key], value)
        assert back["twice"][0] is back["twice"][1]


@pytest.mark.parametrize("obj, words", [
    (np.array([{"a": 1}], dtype=object), "dtype object"),
    (np.zeros(2, dtype=[("a", "f4"), ("b", "i2")]), "structured"),
    (bytearray(b"abc"), "builtins.bytearray"),
    (range(3), "range"),
    (slice(1, 2), "slice"),
])
def test_what_distance_matrices_never_need_is_refused(obj, words):
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(pickle.dumps(obj, protocol=2))


def test_a_real_matrix_pickle_is_far_below_the_memory_limit():
    """The original layout with 20,000 references per side and a 2000×2000 float64 matrix."""
    n = 20_000
    original = {"distance_matrix": np.random.default_rng(0).random((2000, 2000)),
                "query_references": [{"clique": i // 4, "version": i, "matrix_row": i} for i in range(n)],
                "candidate_references": [{"clique": str(i // 4), "version": f"v{i}", "matrix_col": i}
                                         for i in range(n)], "metadata": {"a": [1, 2, {"b": None}]}}
    for protocol in (0, 2, 4, 5):
        data = pickle.dumps(original, protocol=protocol)
        budget = _Budget("x", len(data))
        _scan(data, budget)
        assert budget.used < 0.5 * memory_limit(len(data))
        back = safe_loads(data)
        np.testing.assert_array_equal(back["distance_matrix"], original["distance_matrix"])
        assert back["candidate_references"][-1] == original["candidate_references"][-1]


def test_torch_checkpoints_are_scanned_before_torch_unpickles_them(tmp_path):
    """A deep tuple in a checkpoint's data.pkl crashes torch's weights-only unpickler (C-stack
    overflow while hashing it); the scan refuses it first. Legacy-format files are scanned too."""
    import zipfile

    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(6.0), "cfg": {"k": (1, 2)}}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = _proto(2) + P.EMPTY_DICT + P.NONE + P.TUPLE1 * 10**6 + P.BININT1 + b"\x01" + P.SETITEM + P.STOP
            out.writestr(info, data)
    code = ("from wealy_cli.core.safepickle import load_checkpoint; import sys\n"
            "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as err:\n    print(err)")
    result = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # no crash
    assert "tuples nest more than 100 deep" in result.stdout
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0), "t": (1, (2, 3))}, legacy, _use_new_zipfile_serialization=False)
    back = load_checkpoint(legacy)
    assert torch.equal(back["w"], torch.arange(3.0)) and back["t"] == (1, (2, 3))
    assert torch.equal(load_checkpoint(good)["w"], torch.arange(6.0))
