"""Read pickle files without letting them run code.

A pickle is a small program: loading one calls whatever functions it names, so a file from
someone else can delete files or start processes. ``safe_load`` uses an unpickler whose
``find_class`` admits only what distance-matrix files and checkpoints of the original tools
need: numpy arrays, dtypes and scalars, built-in containers and scalars. Anything else is refused
before it is called.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UserError

# (module, name) pairs a pickle may name. numpy pickles name `numpy.core.*` (numpy 1) or
# `numpy._core.*` (numpy 2); both resolve to the installed numpy's objects.
_NUMPY_CORE = {
    ("multiarray", "_reconstruct"),  # ndarray, protocols 0-4
    ("multiarray", "scalar"),  # numpy scalars (np.float64(1.5))
    ("numeric", "_frombuffer"),  # ndarray, protocol 5
}
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how protocol 2 stores bytes
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    **{("builtins", name): ("builtins", name)
       for name in ("set", "frozenset", "complex", "bytearray", "slice", "range")},
    **{(f"{pkg}.{mod}", name): (f"numpy._core.{mod}", name)
       for pkg in ("numpy.core", "numpy._core") for mod, name in _NUMPY_CORE},
}
# numpy's own dtype classes (numpy.dtypes.Float32DType, ...) appear in some numpy 2 pickles.
_NUMPY_DTYPE_MODULE = "numpy.dtypes"


class UnsafePickleError(UserError):
    """A pickle names something outside the allowed set; it was not executed."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 0-2 pickles written by Python 2 naming
            module = "builtins"
        target = _ALLOWED.get((module, name))
        if target is None and module == _NUMPY_DTYPE_MODULE and name.endswith("DType"):
            target = (module, name)
        if target is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load: the pickle asks to call {module}.{name}, which is "
                "not a numpy array, built-in container or scalar (pickles can run code; "
                "only plain data is accepted)")
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused to load: persistent ids are not accepted")


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` admitting only numpy arrays, built-in containers and scalars."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError) as err:
        raise UserError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err


def safe_load(path: Path) -> Any:
    """Unpickle the file at ``path`` with the restricted unpickler (see ``safe_loads``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from err
    return safe_loads(data, str(path))


__all__ = ["UnsafePickleError", "safe_load", "safe_loads"]
