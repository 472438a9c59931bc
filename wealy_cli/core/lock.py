"""One run per directory: an exclusive OS file lock on ``<directory>/.wealy.lock``.

A run that writes a directory as a whole (a feature store, a training run, the evaluation
chunk cache, a search index) holds the lock from before its first write until its last:

    with run_lock(store_dir, "store"):
        ...

A second run on the same directory gets a :class:`LockedError` (a ``UserError``: one line,
exit code 2) naming the process, host, start time and command that hold it, or, with
``wait=True``, waits for it to finish.

The lock is ``flock(2)`` on the open lock file, so the kernel drops it when the holder dies,
SIGKILL included: the file itself stays behind (deleting it would let two processes lock two
different files of the same name) and its contents, the last holder's description, are only
read to name a live holder. Processes forked by the holder (DataLoader workers) share the lock
until they exit; processes it starts with ``subprocess`` or ``spawn`` do not inherit it.

Worker processes of one run (wealy's own, torchrun, SLURM) must all write: only global rank 0
takes the lock. Multi-process commands take it through the launcher (``core.launch``:
``launch(..., lock=...)`` or ``Workers.lock``), which lets the ranks agree on rank 0's result;
elsewhere a process a launcher marks as a non-zero rank passes through (see :func:`is_launcher`).
Within one process the lock is re-entrant, so a command may take it before writing its settings
file and the library function it calls takes it again for free.

On NFSv4 (and NFSv3 with a lock manager) Linux implements flock with NFS byte-range locks,
which hold across hosts. File systems that refuse locks (some FUSE or Lustre mounts without
``-o flock``) raise a ``UserError``; ``WEALY_NO_LOCK=1`` runs without the lock, and then no
two runs may ever share a directory.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; the run lock is then off (see _locking_enabled)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".wealy.lock"
NO_LOCK_ENV = "WEALY_NO_LOCK"
# Environment variables by which launchers tell a process its rank; non-zero means "a worker".
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class LockedError(UserError):
    """Another live process holds the directory's run lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as written into the lock file."""

    pid: int
    host: str
    started: str
    command: str
    what: str = ""

    @classmethod
    def me(cls, what: str) -> Holder:
        program = Path(sys.argv[0]).name if sys.argv else ""
        if program == "__main__.py" and Path(sys.argv[0]).parent.name == "wealy_cli":  # python -m wealy_cli
            program = "wealy"
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
                   command=" ".join([program, *sys.argv[1:]]), what=what)

    def describe(self) -> str:
        command = self.command if len(self.command) <= 160 else self.command[:157] + "..."
        return f"pid {self.pid} on host {self.host} since {self.started} ({command})"


def is_launcher() -> bool:
    """True unless a launcher marked this process as a non-zero rank (RANK, LOCAL_RANK, NODE_RANK,
    SLURM_PROCID ...): the process that takes a run's lock."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_ENV)


def read_holder(directory: Path) -> Holder | None:
    """The description in ``directory``'s lock file (the live holder's, or the last holder's)."""
    try:
        data = json.loads((Path(directory) / LOCK_FILE).read_text(encoding="utf-8"))
        return Holder(**{k: data[k] for k in ("pid", "host", "started", "command")}, what=data.get("what", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def active_holder(directory: Path) -> Holder | None:
    """Who may be holding ``directory``'s lock now, without touching the lock (a probe could make a
    run that starts at that moment fail): the lock file's holder, unless it is a dead process on
    this host. A holder on another host may have been killed (the file is emptied on release only)."""
    holder = read_holder(directory)
    if holder is None or (holder.host == socket.gethostname() and not _pid_alive(holder.pid)):
        return None
    return holder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _current_holder(directory: Path, patience: float = 1.0) -> Holder | None:
    """The holder's description; a just-started holder may not have written it yet, and until it
    does the file may still name a dead predecessor, so read again for up to ``patience`` s."""
    deadline = time.monotonic() + patience
    while True:
        holder = active_holder(directory)
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _locking_enabled() -> bool:
    return fcntl is not None and os.environ.get(NO_LOCK_ENV, "") in ("", "0")


# Locks this process holds: real path → [DirLock, depth]; makes the lock re-entrant per process.
_held: dict[str, list] = {}
_held_guard = threading.Lock()


class DirLock:
    """The run lock of one directory; :func:`run_lock` is the usual way to take it."""

    def __init__(self, directory: Path, what: str) -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never blocks); True when this process now holds it."""
        if self._fd is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                raise UserError(f"{self.directory}: the file system does not support file locks ({err.strerror}); "
                                f"set {NO_LOCK_ENV}=1 to run without the run lock, and never start two runs "
                                "on this directory at once") from err
            raise
        self._fd = fd
        self._write_holder()
        return True

    def _write_holder(self) -> None:
        payload = json.dumps(Holder.me(self.what).__dict__).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, payload, 0)
        os.fsync(self._fd)

    def refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another process (it has not said which yet)"
        return (f"{self.directory}: this {self.what} is in use by {who}; wait for that run to end "
                "(or stop it) and run again, or use another directory")

    def release(self) -> None:
        """Forget the holder and unlock (the file stays: see the module notes)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _take(key: str, directory: Path, what: str) -> list | None:
    """This process's entry for the lock (taking it now, or once more if already held); None if busy."""
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            lock = DirLock(directory, what)
            if not lock.try_acquire():
                return None
            entry = _held[key] = [lock, 0]
        entry[1] += 1
        return entry


def _drop(key: str) -> None:
    with _held_guard:
        entry = _held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].release()


@contextmanager
def run_lock(directory: Path, what: str, *, wait: bool = False, owner: bool | None = None,
             agree: Callable[[bool], bool] | None = None, poll: float = 1.0) -> Iterator[None]:
    """Hold ``directory``'s run lock for the ``with`` block; ``what`` names the directory in
    messages ("store", "training run" ...).

    A busy lock raises :class:`LockedError` naming the holder, or with ``wait`` is polled every
    ``poll`` s until free. ``owner`` says whether this process takes the lock (default
    :func:`is_launcher`); other processes pass through. Ranks that are already running enter
    together with ``agree``, a broadcast of rank 0's value (``fabric.broadcast(x, src=0)``):
    rank 0 is the owner, and no rank leaves before rank 0 holds the lock."""
    if owner is None:
        owner = is_launcher()
    directory = Path(directory)
    key = os.path.realpath(directory)
    entry, said = None, False
    while True:
        if owner and _locking_enabled():
            entry = _take(key, directory, what)
        got = entry is not None or not (owner and _locking_enabled())
        if agree is not None:
            got = bool(agree(got))
        if got:
            break
        holder = _current_holder(directory) if owner else None
        if not wait:
            raise LockedError(DirLock(directory, what).refusal(holder) if owner else
                              f"{directory}: this {what} is in use by another run (rank 0 could not lock it)")
        if owner and not said:
            who = holder.describe() if holder else "another process"
            ui.console.print(f"waiting: {directory} ({what}) is in use by {who}", highlight=False, soft_wrap=True)
            said = True
        time.sleep(poll)
    try:
        yield
    finally:
        if entry is not None:
            _drop(key)
