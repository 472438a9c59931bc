"""The restricted unpickler admits plain data and refuses anything that would run code."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest
from helpers.cli import run_wealy

from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import UnsafePickleError, safe_load, safe_loads


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
