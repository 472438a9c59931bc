"""Read pickle files and PyTorch checkpoints without letting them run code or exhaust memory.

A pickle is a small program: loading one calls whatever functions it names, so a file from
someone else can delete files or start processes. ``safe_load`` uses an unpickler whose
``find_class`` admits only what distance-matrix files of the original tools need: numpy arrays,
dtypes and scalars, built-in containers and scalars. Anything else is refused before it is
called.

A pickle can also ask for memory: a few bytes can declare a huge memo table, a numpy array of
any shape, or containers nested a million deep (which crash whatever walks them later). So, for
a file of ``n`` bytes, before and while anything is built:

- the opcodes are read once without building anything (``_scan``): lengths must fit in the file,
  memo indices must stay below ``n``, tuples may nest at most ``MAX_DEPTH`` deep (hashing a
  deeper one overflows the C stack), and the objects the opcodes create, costed as CPython lays
  them out, must fit in ``memory_limit(n)`` = 16 MiB + 32 × ``n``;
- numpy arrays are rebuilt from their pickled state only after checking that the declared shape
  × itemsize equals the raw bytes the pickle carries (no object arrays, no structured dtypes),
  and their data counts against the same budget (so one memoised buffer cannot be reused
  thousands of times);
- the loaded structure is copied into plain containers (``_rebuild``), refusing reference
  cycles, nesting deeper than ``MAX_DEPTH`` and shared references that would expand to more
  than about ``n`` items when walked as a tree (JSON, numpy and ``plain`` walk them that way).

``load_checkpoint`` does the same for ``torch.save`` files (the original research code's ``.ckpt``,
the official CLEWS checkpoints, transformers' ``pytorch_model.bin``): ``torch.load(weights_only=True)``
rebuilds only tensors and plain containers; configuration classes the file names (OmegaConf)
become inert stand-ins that only hold the pickled data; anything else is refused unless the
caller trusts the file.
"""

from __future__ import annotations

import io
import itertools
import math
import pickle
import pickletools
import re
import zipfile
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from wealy_cli.core.errors import UserError

MAX_DEPTH = 100  # containers inside containers; distance-matrix files need fewer than 10
MEMORY_ALLOWANCE = 16 * 2**20  # bytes any file may use, however small
MEMORY_FACTOR = 32  # and per byte of file: a real matrix pickle needs about 1-15


def memory_limit(file_bytes: int) -> int:
    """The most memory reading an untrusted ``file_bytes``-byte file may take."""
    return MEMORY_ALLOWANCE + MEMORY_FACTOR * file_bytes


class UnsafePickleError(UserError):
    """A pickle names something outside the allowed set, or asks for more memory than its size
    allows; nothing it names was executed."""


class _Budget:
    """Memory charged while reading one file; refuses past ``memory_limit(size)``."""

    def __init__(self, source: str, size: int) -> None:
        self.source, self.size = source, size
        self.limit = memory_limit(size)
        self.used = 0

    def charge(self, n_bytes: int, what: str) -> None:
        self.used += n_bytes
        if self.used > self.limit:
            raise UnsafePickleError(
                f"{self.source}: refused to load: {what} would take more than {self.limit / 2**20:.0f} MiB "
                f"of memory, more than a {self.size}-byte file can honestly need (limit 16 MiB + "
                f"{MEMORY_FACTOR} × file size)")


def _refuse(source: str, why: str) -> UnsafePickleError:
    return UnsafePickleError(f"{source}: refused to load: {why}")


# ---------------------------------------------------------------- opcode scan (nothing is built)

_MARK = -1  # a MARK on the simulated stack; other entries are tuple nesting depths (≥ 0)
# What each opcode does to the stack, as (kind, count); see _scan.
_STACK: dict[str, tuple[str, int]] = {
    **dict.fromkeys(["INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
                     "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NEXT_BUFFER",
                     "NONE", "NEWTRUE", "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
                     "FLOAT", "BINFLOAT", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EXT1", "EXT2", "EXT4",
                     "GLOBAL", "PERSID"], ("push", 0)),
    "EMPTY_TUPLE": ("tuple", 0), "TUPLE1": ("tuple", 1), "TUPLE2": ("tuple", 2), "TUPLE3": ("tuple", 3),
    "TUPLE": ("tuple_mark", 0), "FROZENSET": ("tuple_mark", 0),  # hashing them recurses into the items
    "LIST": ("mark_push", 0), "DICT": ("mark_push", 0), "INST": ("mark_push", 0), "OBJ": ("mark_push", 0),
    "APPENDS": ("mark_into", 0), "SETITEMS": ("mark_into", 0), "ADDITEMS": ("mark_into", 0),
    "APPEND": ("into", 1), "SETITEM": ("into", 2), "BUILD": ("into", 1),  # the target stays, unchanged
    "REDUCE": ("call", 2), "NEWOBJ": ("call", 2), "NEWOBJ_EX": ("call", 3), "STACK_GLOBAL": ("call", 2),
    "BINPERSID": ("call", 1),
    "POP": ("pop", 1), "POP_MARK": ("pop_mark", 0), "MARK": ("mark", 0), "DUP": ("dup", 0),
    "MEMOIZE": ("memoize", 0), "READONLY_BUFFER": ("keep", 0),
    "PUT": ("put", 0), "BINPUT": ("put", 0), "LONG_BINPUT": ("put", 0),
    "GET": ("get", 0), "BINGET": ("get", 0), "LONG_BINGET": ("get", 0),
    "PROTO": ("none", 0), "FRAME": ("none", 0), "STOP": ("stop", 0),
}
# Upper bounds of what CPython 3.11 allocates per opcode (object header, GC links, allocator
# rounding; strings and bytes add their length; small ints are cached) and per element an opcode
# adds to a container (a list slot with over-allocation; a dict entry and index, or a set slot,
# right after the table grew). Every value also takes a slot on the unpickler's stack.
_STACK_SLOT = 8
_MEMO_SLOT = 16  # the C memo table holds a pointer per index and grows by doubling
_OBJECT_COST = {"EMPTY_LIST": 72, "LIST": 72, "EMPTY_DICT": 80, "DICT": 80, "EMPTY_SET": 232, "FROZENSET": 232,
                "EMPTY_TUPLE": 40, "TUPLE": 40, "TUPLE1": 40, "TUPLE2": 40, "TUPLE3": 40,
                "INT": 32, "BININT": 32, "BININT2": 32, "LONG": 32, "LONG1": 32, "LONG4": 32,
                "FLOAT": 24, "BINFLOAT": 24, **dict.fromkeys(
                    ["STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                     "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"], 64),
                **dict.fromkeys(["REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD", "GLOBAL",
                                 "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"], 256)}
_CARRIES_DATA = {"LONG", "LONG1", "LONG4", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
                 "BINBYTES8", "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_ELEMENT_COST = {"APPEND": 16, "APPENDS": 16, "LIST": 16, "SETITEM": 32, "SETITEMS": 32, "DICT": 32,
                 "ADDITEMS": 64, "FROZENSET": 64, "TUPLE": 8, "TUPLE1": 8, "TUPLE2": 8, "TUPLE3": 8}
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
# opcode byte → (info, stack kind, count, object cost, element cost, carries data, fixed argument size)
_TABLE: list[tuple | None] = [None] * 256
for _op in pickletools.opcodes:
    _TABLE[ord(_op.code)] = (_op, *_STACK[_op.name], _OBJECT_COST.get(_op.name, 0) + _STACK_SLOT,
                             _ELEMENT_COST.get(_op.name, 0), _op.name in _CARRIES_DATA,
                             None if _op.arg is None else _op.arg.n)


class _Malformed(Exception):
    """The opcode stream is broken; the caller names the file."""


def _at(op: pickletools.OpcodeInfo, pos: int) -> str:
    return f"{op.name} at byte {pos}"


def _argument(op: pickletools.OpcodeInfo, data: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of a variable-size argument in ``data``; ``pos`` is just after the opcode."""
    if op.arg.n == pickletools.UP_TO_NEWLINE:
        end = pos
        for _ in range(2 if op.arg.name == "stringnl_noescape_pair" else 1):
            newline = data.find(b"\n", end)
            if newline < 0:
                raise _Malformed(f"{_at(op, pos - 1)} has no end of line")
            end = newline + 1
        return pos, end
    width, signed = _LENGTH_PREFIX[op.arg.n]
    if pos + width > len(data):
        raise _Malformed(f"the file ends inside {_at(op, pos - 1)}")
    length = int.from_bytes(data[pos:pos + width], "little", signed=signed)
    if length < 0:
        raise _Malformed(f"{_at(op, pos - 1)} has a negative length")
    if pos + width + length > len(data):
        raise _Malformed(f"{_at(op, pos - 1)} declares {length} bytes but only {len(data) - pos - width} "
                         "follow (truncated or crafted)")
    return pos + width, pos + width + length


def _memo_index(op: pickletools.OpcodeInfo, data: bytes, start: int, end: int) -> int:
    if op.arg.name == "decimalnl_short":  # protocol 0: digits, then a newline
        try:
            return int(data[start:end - 1])
        except ValueError as err:
            raise _Malformed(f"{op.name} has a malformed memo index") from err
    return int.from_bytes(data[start:end], "little")


def _pop(stack: list[int], count: int, op: pickletools.OpcodeInfo, pos: int) -> list[int]:
    if len(stack) < count or _MARK in stack[len(stack) - count:]:
        raise _Malformed(f"{_at(op, pos)} finds too few items on the stack")
    items = stack[len(stack) - count:]
    del stack[len(stack) - count:]
    return items


def _pop_mark(stack: list[int], op: pickletools.OpcodeInfo, pos: int) -> list[int]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] == _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise _Malformed(f"{_at(op, pos)} finds no MARK")


def _scan(data: bytes, budget: _Budget, pos: int = 0) -> int:
    """Walk the opcodes of the pickle starting at ``data[pos]`` without building anything (see the
    module docstring) and return where it ends. The simulated stack holds, per value, how deep
    tuples nest in it (hashing a tuple recurses that deep)."""
    stack: list[int] = []
    memo: dict[int, int] = {}
    top_index = -1
    spent = 0
    size, allowance = len(data), budget.limit - budget.used
    while pos < size:
        entry = _TABLE[data[pos]]
        if entry is None:
            raise _Malformed(f"unknown opcode {data[pos]:#04x} at byte {pos}")
        op, kind, count, cost, element_cost, carries, arg_size = entry
        if arg_size is None:
            start = end = pos + 1
        elif arg_size >= 0:
            start, end = pos + 1, pos + 1 + arg_size
            if end > size:
                raise _Malformed(f"the file ends inside {_at(op, pos)}")
        else:
            start, end = _argument(op, data, pos + 1)
        if carries:
            cost += end - start
        if kind == "push":
            stack.append(0)
        elif kind == "get":
            stack.append(memo.get(_memo_index(op, data, start, end), 0))
        elif kind in ("memoize", "put", "dup", "keep"):
            if not stack or stack[-1] == _MARK:
                raise _Malformed(f"{_at(op, pos)} finds an empty stack")
            if kind == "dup":
                stack.append(stack[-1])
            elif kind != "keep":
                index = len(memo) if kind == "memoize" else _memo_index(op, data, start, end)
                if index >= size:  # the C unpickler sizes its memo table for the largest index
                    raise _refuse(budget.source, f"{_at(op, pos)} asks for memo slot {index}; a {size}-byte "
                                  "pickle holds far fewer objects")
                memo[index] = stack[-1]
                cost += _MEMO_SLOT * max(0, index - top_index)
                top_index = max(top_index, index)
        elif kind == "mark":
            stack.append(_MARK)
        elif kind in ("into", "mark_into"):  # the target container stays on the stack, unchanged
            items = _pop(stack, count, op, pos) if kind == "into" else _pop_mark(stack, op, pos)
            if not stack or stack[-1] == _MARK:
                raise _Malformed(f"{_at(op, pos)} finds nothing to add to")
            cost += element_cost * len(items)
        elif kind in ("tuple", "tuple_mark"):
            items = _pop(stack, count, op, pos) if kind == "tuple" else _pop_mark(stack, op, pos)
            depth = 1 + max(items, default=0)
            if depth > MAX_DEPTH:
                raise _refuse(budget.source, f"tuples nest more than {MAX_DEPTH} deep ({_at(op, pos)})")
            stack.append(depth)
            cost += element_cost * len(items)
        elif kind == "mark_push":
            cost += element_cost * len(_pop_mark(stack, op, pos))
            stack.append(0)
        elif kind == "call":
            _pop(stack, count, op, pos)
            stack.append(0)
        elif kind == "pop":
            _pop(stack, count, op, pos)
        elif kind == "pop_mark":
            _pop_mark(stack, op, pos)
        elif kind == "stop":
            budget.charge(spent, "the objects it declares")
            return end
        spent += cost
        if spent > allowance:
            budget.charge(spent, "the objects it declares")
        pos = end
    raise _Malformed("the file ends before the pickle's STOP opcode (truncated)")


# ---------------------------------------------------------------- the restricted unpickler


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: a tag for ``_reconstruct``, never called (calling
    ndarray with a shape allocates it, and an object dtype fills every slot)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(self.source, "the pickle calls numpy.ndarray directly, which numpy's own pickles "
                      "never do (it allocates whatever shape it is given)")


class _DtypeState:
    """A dtype as numpy pickles it (``dtype(spec, align, copy)`` + BUILD state); structured and
    subarray dtypes are refused: distance matrices hold plain numbers and strings."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, reader: _RestrictedUnpickler, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 64 or "," in spec or "(" in spec:
            raise _refuse(reader.source, f"the pickle asks for numpy dtype {str(spec)[:80]!r}; only plain "
                          "numeric and string dtypes are accepted")
        reader.budget.charge(512, "dtypes")
        self.dtype = np.dtype(spec, bool(align), bool(copy))
        self.source = reader.source

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise _refuse(self.source, "the pickle holds a structured or subarray numpy dtype; only plain "
                          "numeric and string dtypes are accepted")
        self.dtype.__setstate__(state)


class _ArrayState:
    """What ``_reconstruct`` returns here: nothing is allocated until BUILD hands over the state
    (version, shape, dtype, fortran order, raw bytes), whose size is checked first."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, reader: _RestrictedUnpickler) -> None:
        self.reader = reader
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse(self.reader.source, "a numpy array's pickled state is malformed")
        version, (shape, dtype, fortran, raw) = (state[0], state[1:]) if len(state) == 5 else (1, state)
        dtype = self.reader.dtype(dtype)
        self.reader.check_array(shape, dtype, raw)
        array = _multiarray._reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__((version, tuple(shape), dtype, fortran, raw))
        self.array = array


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, budget: _Budget) -> None:
        super().__init__(file)
        self.source = source
        self.budget = budget
        core = {"_reconstruct": self._reconstruct, "scalar": self._scalar, "_frombuffer": self._frombuffer}
        self.allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): _NdarrayName(source),
            ("numpy", "dtype"): lambda *args: _DtypeState(self, *args),
            ("_codecs", "encode"): self._encode,  # how protocols 0-2 store bytes
            ("builtins", "bytes"): self._empty_bytes,  # ... and empty bytes
            ("collections", "OrderedDict"): self._container(OrderedDict, 80, 96),
            ("builtins", "set"): self._container(set, 232, 64),  # protocols 0-3 store sets by calling set
            ("builtins", "frozenset"): self._container(frozenset, 232, 64),
            ("builtins", "complex"): self._complex,
            # numpy pickles name numpy.core.* (numpy 1) or numpy._core.* (numpy 2)
            **{(f"{pkg}.{mod}", name): core[name] for pkg in ("numpy.core", "numpy._core")
               for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                 ("numeric", "_frombuffer"))},
        }

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 0-2 pickles written by Python 2 naming
            module = "builtins"
        target = self.allowed.get((module, name))
        if target is None:
            raise _refuse(self.source, f"the pickle asks to call {module}.{name}, which is not a numpy "
                          "array, built-in container or scalar (pickles can run code; only plain data is "
                          "accepted)")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse(self.source, "persistent ids are not accepted")

    # ---- what the allowed names do, checked before anything is allocated

    def dtype(self, value: Any) -> np.dtype:
        dtype = value.dtype if isinstance(value, _DtypeState) else value
        if not isinstance(dtype, np.dtype):
            raise _refuse(self.source, f"expected a numpy dtype, got {type(value).__name__}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise _refuse(self.source, f"the pickle holds a numpy array of dtype {dtype}; only plain "
                          "numeric and string arrays are accepted (object arrays rebuild arbitrary objects)")
        return dtype

    def check_array(self, shape: Any, dtype: np.dtype, raw: Any) -> None:
        """The declared shape × itemsize must be exactly the raw bytes present, and fit the budget."""
        if (not isinstance(shape, tuple | list) or len(shape) > 64
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise _refuse(self.source, f"a numpy array has a malformed shape {str(shape)[:80]}")
        if not isinstance(raw, bytes | bytearray | str | memoryview):
            raise _refuse(self.source, f"a numpy array's data is a {type(raw).__name__}, not raw bytes")
        present = raw.nbytes if isinstance(raw, memoryview) else len(raw)
        declared = math.prod(shape) * dtype.itemsize
        if declared != present:
            raise _refuse(self.source, f"a numpy array declares shape {tuple(shape)} of {dtype} "
                          f"({declared} bytes) but carries {present} bytes")
        self.budget.charge(declared + 128, f"a numpy array of shape {tuple(shape)}")

    def _reconstruct(self, subtype: Any, shape: Any = None, dtype: Any = None) -> _ArrayState:
        if not isinstance(subtype, _NdarrayName):
            raise _refuse(self.source, f"_reconstruct of {subtype!r} (only numpy.ndarray is accepted)")
        return _ArrayState(self)

    def _frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        dtype = self.dtype(dtype)
        self.check_array(shape, dtype, buffer)
        return _numeric._frombuffer(buffer, dtype, tuple(shape), "F" if order == "F" else "C")

    def _scalar(self, dtype: Any, data: Any = None) -> Any:
        dtype = self.dtype(dtype)
        if not isinstance(data, bytes | str) or len(data) != dtype.itemsize:
            raise _refuse(self.source, f"a numpy {dtype} scalar does not carry exactly {dtype.itemsize} bytes")
        self.budget.charge(dtype.itemsize + 64, "numpy scalars")
        return _multiarray.scalar(dtype, data)

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise _refuse(self.source, f"_codecs.encode is accepted only for latin-1 text (got "
                          f"{type(text).__name__}, {str(encoding)[:20]!r})")
        self.budget.charge(len(text) + 64, "byte strings")
        return text.encode("latin-1")

    def _empty_bytes(self, *args: Any) -> bytes:
        if args:  # bytes(n) would allocate n bytes
            raise _refuse(self.source, "bytes() is accepted only without arguments (how protocols 0-2 store b'')")
        return b""

    def _complex(self, real: Any = 0.0, imag: Any = 0.0) -> complex:
        if not all(type(x) in (int, float) for x in (real, imag)):
            raise _refuse(self.source, "complex() is accepted only with two numbers")
        return complex(real, imag)

    def _container(self, kind: type, cost: int, per_item: int) -> Callable[..., Any]:
        def build(items: Any = ()) -> Any:
            if not isinstance(items, list | tuple):
                raise _refuse(self.source, f"{kind.__name__}() is accepted only with a list or tuple, "
                              f"not {type(items).__name__}")
            self.budget.charge(cost + per_item * len(items), f"{kind.__name__} copies")
            return kind(items)
        return build


# ---------------------------------------------------------------- rebuilding plain data

_LEAVES = (str, bytes, bytearray, bool, int, float, complex, type(None), np.ndarray, np.generic, np.dtype)
_PLAIN = frozenset({str, bytes, bytearray, bool, int, float, complex, type(None)})  # fast path of _LEAVES
_CONTAINERS = frozenset({list, tuple, set, frozenset, dict, OrderedDict})
NODE_ALLOWANCE = 10_000  # items beyond the file's byte count that a walk of the data may visit


def _leaf(obj: Any, source: str) -> Any:
    """The plain value of a non-container: placeholders become arrays and dtypes."""
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise _refuse(source, "a numpy array comes without its data")
        return obj.array
    if isinstance(obj, _DtypeState):
        return obj.dtype
    if isinstance(obj, _LEAVES):
        return obj
    raise _refuse(source, f"the pickle's data holds a {type(obj).__name__} object, which is not plain data")


def _children(obj: Any) -> list[Any]:
    return list(itertools.chain.from_iterable(obj.items())) if isinstance(obj, dict) else list(obj)


def _assemble(template: Any, parts: list[Any]) -> Any:
    kind = type(template)
    if kind is dict or kind is OrderedDict:
        return kind(zip(parts[0::2], parts[1::2]))
    return parts if kind is list else kind(parts)


def _rebuild(root: Any, source: str, max_items: int) -> Any:
    """A plain copy of the unpickled data: placeholders become arrays and dtypes; cycles, nesting
    deeper than ``MAX_DEPTH`` and sharing that expands past ``max_items`` items are refused.
    Iterative, so that nothing here recurses on hostile input."""
    done: dict[int, tuple[Any, int]] = {}  # id → (copy, items in the expanded tree)
    open_ids: set[int] = set()  # containers on the current path
    stack: list[tuple[Any, int, list[Any] | None]] = [(root, 0, None)]
    while stack:
        obj, depth, children = stack.pop()
        key = id(obj)
        if children is not None:  # all children are done: assemble
            parts, size = [], 1
            for child in children:
                if type(child) in _PLAIN:
                    parts.append(child)
                    size += 1
                else:
                    copy, n = done[id(child)]
                    parts.append(copy)
                    size += n
            if size > max_items:
                raise _refuse(source, f"its shared references expand to more than {max_items} items "
                              "(a file this size cannot hold that much data)")
            done[key] = (_assemble(obj, parts), size)
            open_ids.discard(key)
            continue
        if key in done:
            continue
        if type(obj) not in _CONTAINERS:
            done[key] = (_leaf(obj, source), 1)
            continue
        if key in open_ids:
            raise _refuse(source, "its data contains a reference cycle")
        if depth >= MAX_DEPTH:
            raise _refuse(source, f"containers nest more than {MAX_DEPTH} deep")
        open_ids.add(key)
        children = _children(obj)
        stack.append((obj, depth, children))
        stack.extend((child, depth + 1, None) for child in children if type(child) not in _PLAIN)
    return done[id(root)][0]


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` admitting only numpy arrays, built-in containers and scalars, within the
    memory and nesting bounds of the module docstring."""
    budget = _Budget(source, len(data))
    try:
        _scan(data, budget)
        loaded = _RestrictedUnpickler(io.BytesIO(data), source, budget).load()
        return _rebuild(loaded, source, len(data) + NODE_ALLOWANCE)
    except UnsafePickleError:
        raise
    except _Malformed as err:
        raise UserError(f"{source}: not a readable pickle ({err})") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError) as err:
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


TRUST_HINT = "If you trust where this file came from, rerun with --trust-pickle."


def _refusal(path: Path, unsafe: list[str], detail: str = "", hint: str = TRUST_HINT) -> UnsafeCheckpointError:
    names = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
    what = f"names {names}" if names else f"holds objects the weights-only loader refuses ({detail})"
    return UnsafeCheckpointError(
        f"{path}: refused to load: the checkpoint's pickle {what}. Loading it would run that code "
        f"with your permissions, so a file from an untrusted source could do anything. {hint}")


def load_checkpoint(path: Path, trust_pickle: bool = False, trust_hint: str = TRUST_HINT) -> Any:
    """The object stored in a ``torch.save`` file, rebuilt without running code unless trusted.
    ``trust_hint`` ends a refusal: how the user can load the file anyway (or what to do instead)."""
    import torch  # heavy: only when a checkpoint is read

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    if not _looks_like_torch_save(path):
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    _scan_checkpoint(path)
    safe, unsafe = _split_globals(_named_globals(path))
    if unsafe and not trust_pickle:
        raise _refusal(path, unsafe, hint=trust_hint)
    if not unsafe:
        try:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not trust_pickle:
                reason = re.search(r"WeightsUnpickler error: (.*)", str(err))
                raise _refusal(path, [], reason.group(1) if reason else str(err).splitlines()[0],
                               trust_hint) from err
        except Exception as err:  # noqa: BLE001 - a damaged or odd file, not a bug of ours
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    try:  # the user vouched for the file
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise UserError(f"{path}: the checkpoint needs the Python module '{err.name}', which is "
                        "not installed") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({err})") from err


_LEGACY_PICKLES = 5  # the legacy format: magic number, protocol, system info, the object, storage keys
_LEGACY_WINDOW = 64 * 2**20  # they come first, before the raw storage bytes


def _scan_checkpoint(path: Path) -> None:
    """Run ``_scan`` over the checkpoint's pickles before torch unpickles them: torch's
    weights-only unpickler, too, hashes tuples recursively (a deep one crashes the process)."""
    size = path.stat().st_size
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.count("/") == 1 and info.filename.endswith("/data.pkl"):
                        if info.file_size > memory_limit(size):
                            raise _refuse(str(path), f"its pickle claims {info.file_size} bytes")
                        data = archive.read(info)
                        _scan(data, _Budget(str(path), len(data)))
            return
        with open(path, "rb") as fh:
            data = fh.read(_LEGACY_WINDOW)
        pos, budget = 0, _Budget(str(path), len(data))
        for _ in range(_LEGACY_PICKLES):
            pos = _scan(data, budget, pos)
    except _Malformed as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle stream (the legacy format)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"
