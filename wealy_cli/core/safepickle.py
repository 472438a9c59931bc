"""Read pickle files and PyTorch checkpoints without letting them run code.

A pickle is a small program: loading one calls whatever functions it names, so a file from
someone else can delete files or start processes. ``safe_load`` uses an unpickler whose
``find_class`` admits only what distance-matrix files and checkpoints of the original tools
need: numpy arrays, dtypes and scalars, built-in containers and scalars. Anything else is refused
before it is called.

``load_checkpoint`` does the same for ``torch.save`` files (the original research code's ``.ckpt``
and the official CLEWS checkpoints): ``torch.load(weights_only=True)`` rebuilds only tensors and
plain containers; configuration classes the file names (OmegaConf) become inert stand-ins that
only hold the pickled data; anything else is refused unless the caller trusts the file.
"""

from __future__ import annotations

import importlib
import io
import pickle
import re
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, BinaryIO

from wealy_cli.core.errors import UserError

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


# ---------------------------------------------------------------- torch checkpoints

# Globals an original checkpoint names that are plain data (no code runs to rebuild them).
_PLAIN_TYPES = {"builtins.int": int, "builtins.float": float, "builtins.str": str, "builtins.bool": bool,
                "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple, "builtins.object": object,
                "builtins.set": set, "collections.defaultdict": defaultdict,
                # Fabric's AttributeDict is a dict subclass: rebuild it as a plain dict.
                "lightning.fabric.utilities.data.AttributeDict": dict,
                "lightning_fabric.utilities.data.AttributeDict": dict}
_INERT_MODULES = ("omegaconf.", "typing.")


class UnsafeCheckpointError(UserError):
    """The checkpoint's pickle names code that would run while loading; nothing was executed."""


class _Inert:
    """Stand-in for a configuration class: stores what the pickle gives it, runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        inst = object.__new__(cls)
        inst.args = args
        inst.state = None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called when the pickle REDUCEs it
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _inert_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (_Inert,), {"qualname": qualname})


def plain(obj: Any) -> Any:
    """An inert OmegaConf object (DictConfig / ListConfig / node) → plain dicts, lists, values."""
    if isinstance(obj, _Inert):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        return None
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- loading the pickle


def _named_globals(path: Path) -> list[str]:
    """Globals the checkpoint's pickle names beyond torch's weights-only set (read, not run)."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, zipfile.BadZipFile):
        return []  # legacy (non-zip) format: the weights-only loader itself checks it


def _split_globals(names: list[str]) -> tuple[list[tuple[Any, str]], list[str]]:
    """(safe stand-ins to register, names that would need code execution)."""
    safe, unsafe = [], []
    for name in names:
        if name in _PLAIN_TYPES:
            safe.append((_PLAIN_TYPES[name], name))
        elif name.startswith(_INERT_MODULES):
            safe.append((_inert_class(name), name))
        else:
            unsafe.append(name)
    return safe, unsafe


def _refusal(path: Path, unsafe: list[str], detail: str = "") -> UnsafeCheckpointError:
    names = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
    what = f"names {names}" if names else f"holds objects the weights-only loader refuses ({detail})"
    return UnsafeCheckpointError(
        f"{path}: refused to load: the checkpoint's pickle {what}. Loading it would run that code "
        "with your permissions, so a file from an untrusted source could do anything. If you trust "
        "where this file came from, rerun with --trust-pickle.")


def load_checkpoint(path: Path, trust_pickle: bool = False) -> Any:
    """The object stored in a ``torch.save`` file, rebuilt without running code unless trusted."""
    import torch  # heavy: only when a checkpoint is read

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    if not _looks_like_torch_save(path):
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    safe, unsafe = _split_globals(_named_globals(path))
    if unsafe and not trust_pickle:
        raise _refusal(path, unsafe)
    if not unsafe:
        try:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not trust_pickle:
                reason = re.search(r"WeightsUnpickler error: (.*)", str(err))
                raise _refusal(path, [], reason.group(1) if reason else str(err).splitlines()[0]) from err
        except Exception as err:  # noqa: BLE001 - a damaged or odd file, not a bug of ours
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    try:  # the user vouched for the file
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise UserError(f"{path}: the checkpoint needs the Python module '{err.name}', which is "
                        "not installed") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({err})") from err


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle stream (the legacy format)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"
