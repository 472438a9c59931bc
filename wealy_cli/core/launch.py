"""Which devices a run uses, and the one launcher that spreads a run over processes and machines.

Devices. ``--gpus N`` asks for N GPUs per node (one process each); ``--gpus 0`` runs on CPU with
``--workers`` processes. Left unset, a run takes one GPU when CUDA sees one and the CPU otherwise
(or the CPU when ``--workers`` asks for several processes). Asking for more GPUs than CUDA sees
is the user's to fix, in the same words everywhere.

Processes. ``--nodes M`` runs on M machines, each running the processes above. Every heavy
command does its work inside ``with launch(devices, nodes) as workers:``, which

- with one process in all, builds nothing (no Fabric, no process group: the fast path);
- under torchrun or SLURM (``srun``), joins the processes they started (and checks that their
  count matches ``--nodes`` × processes per node);
- otherwise starts the other processes of this node itself (this same command again, with
  ``LOCAL_RANK`` set), as ``torchrun --nproc-per-node`` would;

then builds one Lightning Fabric (DDP; gloo on CPU, NCCL on GPU) and hands the workflow a
:class:`Workers`: its rank, the world size, its device, and the collectives it needs.

Failures. A rank that raises reports one line to the run's rendezvous store (the TCPStore every
launcher already provides) before it exits. A watch thread in every process keeps a heartbeat
there and looks for such reports: another rank's failure, a rank silent for ``--peer-timeout``
seconds (its node died), a child process that died, or the store itself gone (rank 0's node
died) stops this process too, with one line and a non-zero exit code: at the workflow's next
:meth:`Workers.check` (finished work is kept: stores flush their open shard), or at the latest
after a short grace period. On success every rank meets the others at the end, the watch
stops, and the process group is destroyed before the interpreter exits: a gloo process group
left to interpreter shutdown can abort the process (``terminate called without an active
exception``, exit -6) after all the work was done.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.lock import is_launcher, read_holder, run_lock
from wealy_cli.core.settings import Options, option

T = TypeVar("T")
SPAWNED_ENV = "WEALY_SPAWNED"  # set in the processes this launcher starts itself
POLL = 0.5  # seconds between two looks of the watch thread
SHARED_PATIENCE = 10.0  # seconds a shared file system may take to show rank 0's lock file elsewhere
# Collectives here never wait for long work (shares meet through the store first), so a
# collective or a rendezvous that takes this long has lost a process.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
EXIT_GRACE = 30.0  # seconds a stopped process has to stop by itself before it is ended


class DeviceOptions(Options):
    """How many processes a run spreads over, on GPUs or on the CPU."""

    gpus: int | None = option(None, "GPUs per node, one process each; 0 = CPU only.", ge=0,
                              shown_default="1 if CUDA sees a GPU, else 0")
    workers: int = option(1, "Processes on the CPU (with --gpus 0); results do not depend on the number.",
                          ge=1)


class NodeOptions(Options):
    """How many machines a run spreads over (each started by torchrun or srun)."""

    nodes: int = option(1, "Machines taking part, each running --gpus (or --workers) processes; start the "
                        "command on every machine with torchrun or srun.", ge=1)
    peer_timeout: float = option(120.0, "Seconds without a sign of life from another process of the run "
                                 "before every process stops (several processes only).", gt=0)


@dataclass(frozen=True)
class Devices:
    """The resolved choice: ``accelerator`` "cuda" or "cpu" and processes per node."""

    accelerator: str
    processes: int

    @property
    def on_gpu(self) -> bool:
        return self.accelerator == "cuda"

    def flag(self) -> str:
        """How the user asked for these processes, for messages."""
        return f"--gpus {self.processes}" if self.on_gpu else f"--workers {self.processes}"


def cuda_devices() -> int:
    """GPUs CUDA sees (0 without CUDA or without torch's CUDA build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus: int) -> None:
    """A UserError, in the same words for every command, when CUDA sees fewer than ``gpus`` GPUs."""
    found = cuda_devices() if gpus > 0 else 0
    if gpus > found:
        seen = "no CUDA GPU is visible" if found == 0 else f"only {found} CUDA GPU(s) are visible"
        fewer = f"--gpus {found} or fewer, or " if found else ""
        raise UserError(f"--gpus {gpus}: {seen}; use {fewer}--gpus 0 to run on the CPU (--workers N for N processes)")


def resolve_devices(opts: DeviceOptions) -> Devices:
    """``opts`` → the devices to use, or a UserError saying what was found and what to use."""
    if opts.gpus is None and opts.workers > 1:  # asking for CPU processes is asking for the CPU
        return Devices("cpu", opts.workers)
    gpus = opts.gpus if opts.gpus is not None else min(cuda_devices(), 1)
    check_gpus(gpus)
    if gpus > 0:
        if opts.workers > 1:
            raise UserError(f"--workers {opts.workers} applies to CPU runs (--gpus 0); "
                            f"with --gpus {gpus} there is one process per GPU")
        return Devices("cuda", gpus)
    return Devices("cpu", opts.workers)


# ---------------------------------------------------------------- who started this process


class RunStopped(UserError):
    """This process stopped because another one of the run failed (or because it failed itself
    and rank 0 has already said so: then ``quiet``). ``exit_code`` is the failing rank's."""

    def __init__(self, message: str, exit_code: int = 1, quiet: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.quiet = quiet


def started_by() -> str:
    """"torchrun", "slurm" (several srun tasks) or "wealy" (the processes are this command's own)."""
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        return "torchrun"
    if _int_env("SLURM_NTASKS", 1) > 1 and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "slurm"
    return "wealy"


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def check_world(devices: Devices, nodes: int, launcher: str | None = None) -> None:
    """A UserError when the processes torchrun or srun started are not those the flags ask for."""
    launcher = launcher or started_by()
    want = f"--nodes {nodes} × {devices.flag()} = {devices.processes * nodes} process(es)"
    if launcher == "torchrun":
        total, per_node = _int_env("WORLD_SIZE", 1), _int_env("LOCAL_WORLD_SIZE", 1)
        if per_node != devices.processes:
            raise UserError(f"torchrun started {per_node} process(es) per node (--nproc-per-node) but {devices.flag()} "
                            f"asks for {devices.processes}; make them equal")
        if total != devices.processes * nodes:
            raise UserError(f"torchrun started {total} process(es) in all but {want}; "
                            f"give --nodes {total // max(per_node, 1)}")
    elif launcher == "slurm":
        total = _int_env("SLURM_NTASKS", 1)
        per_node = _int_env("SLURM_NTASKS_PER_NODE", devices.processes)
        if total != devices.processes * nodes or per_node != devices.processes:
            raise UserError(f"SLURM started {total} task(s) ({per_node} per node) but {want}; run the command "
                            f"with srun --nodes {nodes} --ntasks-per-node {devices.processes}")
    elif nodes > 1 and not os.environ.get("MASTER_ADDR"):
        raise UserError(f"--nodes {nodes}: start the command on every machine with torchrun or srun (see the "
                        "README, 'Multi-GPU and multi-node'), or set MASTER_ADDR, MASTER_PORT and NODE_RANK on each")


# ---------------------------------------------------------------- what a workflow sees


class Workers:
    """This process's place in a run, and the collectives the workflows use. With one process
    every method is a no-op or the identity, so a workflow has one code path.

    ``all_reduce`` and ``gather_object`` end shared work: they first wait (:meth:`barrier`) until
    every process has finished its share, so a slow share never trips a collective's timeout."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None, fabric: Any = None,
                 watch: _Watch | None = None) -> None:
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.fabric = fabric  # for training: setup, backward, autocast
        self._watch = watch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every world-th one, starting at its rank."""
        return list(items[self.rank::self.world])

    def check(self) -> None:
        """Raise :class:`RunStopped` if another process of the run failed (call between items of work)."""
        if self._watch is not None:
            self._watch.check()

    def barrier(self) -> None:
        """Wait until every process gets here, however long that takes (through the store, not a
        collective, so a slow rank never trips a collective's timeout); stops if one fails."""
        if self._watch is not None:
            self._watch.meet("barrier")

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (on the CPU)."""
        if self.world == 1:
            return tensor
        self.barrier()
        out = tensor.to(self.device)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.cpu()

    def gather_object(self, obj: T) -> list[T] | None:
        """Every process's ``obj`` in rank order on rank 0; None elsewhere."""
        if self.world == 1:
            return [obj]
        self.barrier()
        out: list[Any] | None = [None] * self.world if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def agree(self, value: bool) -> bool:
        """Rank 0's ``value`` everywhere (for ``run_lock(agree=...)``)."""
        return bool(self.broadcast(bool(value)))

    def check_same(self, values: Sequence[str], what: str) -> None:
        """A UserError on a process whose ``values`` (e.g. the keys of its work list) differ from
        rank 0's: every node must read the same data, or shares would overlap or miss songs."""
        if self.world == 1:
            return
        digest = hashlib.sha256("\n".join(values).encode()).hexdigest()
        if self.broadcast(digest) != digest:
            raise UserError(f"{what} differs from rank 0's ({len(values)} items on {socket.gethostname()}); "
                            "every node must see the same files")

    @contextmanager
    def lock(self, directory: Path, what: str, wait: bool = False) -> Iterator[None]:
        """The run lock of ``directory`` (``core.lock.run_lock``) for the whole run: rank 0 takes
        it and every rank learns whether it could. Each other rank then checks that it sees the
        same directory (rank 0's lock file): the processes of a run must share it."""
        agree = self.agree if self.world > 1 else None
        with run_lock(directory, what, wait=wait, owner=self.is_main, agree=agree):
            if self.world > 1:
                self._check_shared(Path(directory), what)
            yield

    def _check_shared(self, directory: Path, what: str) -> None:
        holder = self.broadcast(read_holder(directory) if self.is_main else None)
        if holder is None or self.is_main:  # no lock file (WEALY_NO_LOCK=1): nothing to compare
            return
        deadline = time.monotonic() + SHARED_PATIENCE
        while read_holder(directory) != holder:
            if time.monotonic() > deadline:
                raise UserError(f"{directory}: {socket.gethostname()} does not see the {what} rank 0 locked there "
                                f"(on {holder.host}); put it on a file system every node shares")
            time.sleep(0.2)


# ---------------------------------------------------------------- the failure watch


class _Watch:
    """Heartbeats and failure reports of a run's processes, in the rendezvous store.

    Keys (under a prefix of this launch): ``beat/<rank>`` counters, ``failures`` and
    ``failed/<n>`` reports, ``seen/<rank>`` when a process has read a report, ``meet/<name>/<n>``
    counters for :meth:`meet`. Rank 0 watches every heartbeat, the others watch rank 0's."""

    def __init__(self, rank: int, world: int, timeout: float, children: list[subprocess.Popen],
                 spawned: bool) -> None:
        self.rank, self.world, self.timeout = rank, world, timeout
        self.children, self.spawned = children, spawned
        self.address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        self.grace = min(EXIT_GRACE, timeout)
        prefix = f"wealy/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        # Two connections: the watch thread never shares one with the main thread.
        self.store, self._thread_store = (torch.distributed.PrefixStore(prefix, self._connect()) for _ in range(2))
        self.store.set(f"host/{rank}", socket.gethostname())
        self.reason: tuple[str, int, bool] | None = None  # message, exit code, rank 0 says it
        self._said = False
        self._meetings: dict[str, int] = {}
        self._stop = threading.Event()
        self._taken_over = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="wealy-watch", daemon=True)

    def _connect(self) -> Any:
        host, port = self.address.rsplit(":", 1)
        return torch.distributed.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=60))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._taken_over.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- main thread

    def check(self) -> None:
        if self.reason is not None:
            self._taken_over.set()
            raise self.stopped()

    def stopped(self) -> RunStopped:
        message, code, rank0_says = self.reason
        return RunStopped(message, code, quiet=self.spawned and rank0_says)

    def meet(self, name: str) -> None:
        """Count in at ``name`` and wait for every rank (polling, so failures still stop it)."""
        n = self._meetings[name] = self._meetings.get(name, 0) + 1
        key = f"meet/{name}/{n}"
        self.store.add(key, 1)
        pause = 0.001
        while self.store.add(key, 0) < self.world:
            self.check()
            time.sleep(pause)
            pause = min(2 * pause, 0.2)

    def report(self, message: str, code: int) -> bool:
        """Tell the others this rank failed; wait (briefly) until they have read it. True when
        rank 0 has read it (so rank 0 prints it)."""
        self._taken_over.set()
        try:
            n = self.store.add("failures", 1)
            payload = {"rank": self.rank, "host": socket.gethostname(), "message": message, "code": code}
            self.store.set(f"failed/{n}", json.dumps(payload))
            self._mark_seen(self.store)
            deadline = time.monotonic() + self.grace
            while self.store.add("seen", 0) < self.world and time.monotonic() < deadline:
                time.sleep(0.05)
            return self.rank == 0 or self.store.check(["seen/0"])
        except Exception:  # noqa: BLE001 - the store is gone: nobody left to tell
            return self.rank == 0

    def leave(self) -> None:
        """After the last meeting: rank 0 (whose node may host the store) waits until every rank
        is done with the store, so none loses it while finishing."""
        self.store.add("left", 1)
        deadline = time.monotonic() + self.grace
        while self.rank == 0 and self.store.add("left", 0) < self.world and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- watch thread

    def _run(self) -> None:
        store, beats = self._thread_store, {}
        while not self._stop.wait(POLL):
            try:
                store.add(f"beat/{self.rank}", 1)
                failure = self._reported(store)
                if failure is None:
                    failure = self._dead_child() or self._silent_peer(store, beats)
                    if failure is not None:  # tell everyone, as a failing rank would
                        n = store.add("failures", 1)
                        store.set(f"failed/{n}", json.dumps({"rank": -1, "message": failure[0], "code": failure[1]}))
                        failure = (f"stopped: {failure[0]}", failure[1], True)
                if failure is not None:
                    self._mark_seen(store)
            except Exception as err:  # noqa: BLE001 - the store is unreachable: rank 0's node is gone
                if self._stop.is_set():
                    return
                failure = (f"stopped: lost contact with the run's rendezvous at {self.address} ({type(err).__name__}): "
                           "rank 0's process or node ended, or the network failed; rerun to resume", 1, False)
            if failure is not None:
                self._stop_process(failure)
                return

    def _reported(self, store: Any) -> tuple[str, int, bool] | None:
        if store.add("failures", 0) == 0:
            return None
        first = json.loads(store.get("failed/1"))
        if first["rank"] < 0:  # found by a watch: its message says who
            return f"stopped: {first['message']}", int(first["code"]), True
        return (f"stopped: rank {first['rank']} of {self.world} on {first['host']} failed: {first['message']}",
                int(first["code"]), True)

    def _mark_seen(self, store: Any) -> None:
        with self._lock:
            if not self._said:
                self._said = True
                store.set(f"seen/{self.rank}", "1")
                store.add("seen", 1)

    def _dead_child(self) -> tuple[str, int] | None:
        for local, child in enumerate(self.children, start=1):
            code = child.poll()
            if code not in (None, 0):
                return f"rank {self.rank + local} of {self.world} (pid {child.pid}) ended with {exit_text(code)}", 1
        return None

    def _silent_peer(self, store: Any, beats: dict[int, tuple[int, float]]) -> tuple[str, int] | None:
        now = time.monotonic()
        for peer in (range(1, self.world) if self.rank == 0 else (0,)):
            count = store.add(f"beat/{peer}", 0)
            last = beats.get(peer)
            if last is None or count != last[0]:
                beats[peer] = (count, now)
            elif now - last[1] > self.timeout:
                host = store.get(f"host/{peer}").decode() if store.check([f"host/{peer}"]) else "its node"
                return (f"rank {peer} of {self.world} on {host} gave no sign of life for {self.timeout:g} s "
                        "(--peer-timeout): its process or node is gone; rerun to resume"), 1
        return None

    def _stop_process(self, failure: tuple[str, int, bool]) -> None:
        """Let the main thread stop at its next check; end the process if it does not in time."""
        self.reason = failure
        if self._taken_over.wait(self.grace):
            return
        message, code, rank0_says = failure
        if not (self.spawned and rank0_says):  # rank 0 shares the terminal of the processes it started
            ui.console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        end_children(self.children, self.grace)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_text(code: int) -> str:
    """A process's return code in words: "exit code 2", "signal SIGKILL"."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def end_children(children: list[subprocess.Popen], grace: float) -> list[int]:
    """Wait up to ``grace`` s for ``children`` to exit, then kill the rest; their return codes."""
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return [child.returncode for child in children]


# ---------------------------------------------------------------- launching


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _own_command() -> list[str]:
    """The command line that started this process (``wealy ...`` or ``python -m wealy_cli ...``)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if "pytest" in (spec.name if spec is not None else Path(sys.argv[0]).name):
        # Started again, the test runner would run the whole test session in every process.
        raise RuntimeError("several processes need a real 'wealy' process (in tests: run_wealy_process)")
    if spec is not None:
        return [sys.executable, "-m", spec.name, *sys.argv[1:]]
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _spawn_local_ranks(devices: Devices, nodes: int) -> list[subprocess.Popen]:
    """Start local ranks 1.. of this node (this process is local rank 0), torchrun-style."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("NODE_RANK", "0")
    os.environ["WORLD_SIZE"] = str(devices.processes * nodes)
    os.environ["LOCAL_RANK"] = "0"
    env = dict(os.environ)
    env[SPAWNED_ENV] = "1"
    # Give the other ranks the OpenMP default this process has (one thread per core): Lightning
    # would set OMP_NUM_THREADS=1 there, and with it CTranslate2 can sample other tokens for the
    # same seeded fallback window, so stores would depend on the rank that made them.
    env.setdefault("OMP_NUM_THREADS", str(_cpus()))
    command = _own_command()
    return [subprocess.Popen(command, env={**env, "LOCAL_RANK": str(r)}) for r in range(1, devices.processes)]


def _cluster_environment(launcher: str) -> Any:
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    return {"torchrun": TorchElasticEnvironment, "slurm": SLURMEnvironment}.get(launcher, LightningEnvironment)()


def _fabric(devices: Devices, nodes: int, precision: str, launcher: str | None) -> Any:
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    if launcher is None:  # one process
        return Fabric(accelerator=devices.accelerator, devices=1, strategy="auto", precision=precision)
    strategy = DDPStrategy(cluster_environment=_cluster_environment(launcher),
                           process_group_backend="nccl" if devices.on_gpu else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Fabric(accelerator=devices.accelerator, devices=devices.processes, num_nodes=nodes, strategy=strategy,
                  precision=precision)


@contextmanager
def launch(devices: Devices, nodes: int = 1, *, peer_timeout: float = 120.0, precision: str = "32-true",
           fabric: bool = False, lock: tuple[Path, str] | None = None) -> Iterator[Workers]:
    """Run the ``with`` body on every process of the run: ``devices.processes`` per node on
    ``nodes`` machines. ``fabric=True`` also builds a Fabric for one process (training needs its
    precision and autocast). Rank 0 is the only one meant to print results and write run files.

    ``lock`` (directory, what) is the run lock of the directory the run writes as a whole: rank 0
    holds it until every process is done (:meth:`Workers.lock`); when wealy starts the processes
    itself, it takes it before starting them, so a busy directory is refused at once.

    A failure in the body is reported to the other processes, which stop with one line; on
    success the processes meet at the end, then the process group is destroyed."""
    launcher = started_by()
    check_world(devices, nodes, launcher)
    with ExitStack() as held:
        if lock is not None and launcher == "wealy" and is_launcher():
            held.enter_context(run_lock(*lock))  # re-entrant: Workers.lock takes it again
        if devices.processes * nodes == 1:
            run = _one_process(devices, precision, fabric, lock)
        else:
            run = _processes(devices, nodes, peer_timeout, precision, lock, launcher)
        with run as workers:
            yield workers


@contextmanager
def _one_process(devices: Devices, precision: str, fabric: bool, lock: tuple[Path, str] | None) -> Iterator[Workers]:
    """The fast path: no process group, no watch."""
    device = torch.device("cuda", 0) if devices.on_gpu else torch.device("cpu")
    made = _fabric(devices, 1, precision, None) if fabric else None
    if made is not None:
        made.launch()
        device = made.device
    workers = Workers(0, 1, device, made)
    with workers.lock(*lock) if lock is not None else nullcontext():
        yield workers


@contextmanager
def _processes(devices: Devices, nodes: int, peer_timeout: float, precision: str, lock: tuple[Path, str] | None,
               launcher: str) -> Iterator[Workers]:
    saved, quiet = dict(os.environ), ui.is_quiet()
    spawned = os.environ.get(SPAWNED_ENV) == "1"
    children = _spawn_local_ranks(devices, nodes) if launcher == "wealy" and "LOCAL_RANK" not in os.environ else []
    workers = None
    try:
        made = _fabric(devices, nodes, precision, launcher)
        with _children_watched(children):  # a child that dies before the rendezvous must not leave us waiting
            made.launch()
        if not devices.on_gpu and devices.processes > 1:  # the cores are shared by this node's processes
            torch.set_num_threads(max(1, _cpus() // devices.processes))
        if made.global_rank != 0:
            ui.set_quiet(True)  # rank 0 shows progress and results
        watch = _Watch(made.global_rank, made.world_size, peer_timeout, children, spawned)
        workers = Workers(made.global_rank, made.world_size, made.device, made, watch)
        watch.start()
        with workers.lock(*lock) if lock is not None else nullcontext():
            yield workers
            watch.meet("end")  # every process is done writing before rank 0 unlocks
        watch.stop()
        watch.leave()
        _destroy_process_group()
        _finish_children(children, watch.grace)
    except BaseException as err:
        stopped = _failed(err, workers, children, devices)
        if stopped is err:
            raise
        raise stopped from err
    finally:
        _restore_environment(saved)
        ui.set_quiet(quiet)


@contextmanager
def _children_watched(children: list[subprocess.Popen]) -> Iterator[None]:
    """While the processes meet (before the watch runs): end the run if a child process dies."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL):
            for local, child in enumerate(children, start=1):
                code = child.poll()
                if code not in (None, 0):
                    ui.console.print(f"[bold red]error:[/] local rank {local} (pid {child.pid}) ended with "
                                     f"{exit_text(code)} before the processes met", highlight=False, soft_wrap=True)
                    end_children(children, 0)
                    os._exit(1)

    thread = threading.Thread(target=watch, name="wealy-children", daemon=True)
    if children:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if children:
            thread.join()


def _restore_environment(saved: dict[str, str]) -> None:
    """Undo what launching set (MASTER_PORT, LOCAL_RANK ...), for a process that goes on."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _failed(err: BaseException, workers: Workers | None, children: list[subprocess.Popen],
            devices: Devices) -> BaseException:
    """Report this process's failure (or the one that stopped it) and tear down; the exception to raise."""
    watch = workers._watch if workers is not None else None
    if watch is None:  # failed before the run's processes met: nothing to tell
        end_children(children, EXIT_GRACE)
        return err
    if watch.reason is None and is_communication_error(err):  # a peer ended: its watch may say why
        deadline = time.monotonic() + 4 * POLL
        while watch.reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
    watch.stop()
    if watch.reason is not None or isinstance(err, RunStopped):
        stopped = err if isinstance(err, RunStopped) else watch.stopped()
    else:
        message, code = describe_failure(err)
        heard = watch.report(message, code)
        # A process this launcher started shares rank 0's terminal: when rank 0 has read the
        # report it prints it, and this one says nothing more.
        stopped = RunStopped(message, code, quiet=True) if watch.spawned and heard and watch.rank != 0 else err
    if not devices.on_gpu:  # gloo tears down locally; NCCL's teardown can wait on the failed peers
        _destroy_process_group()
    end_children(children, watch.grace)
    return stopped


def describe_failure(err: BaseException) -> tuple[str, int]:
    """(one line, exit code) for a failure, as the command line would print it."""
    if isinstance(err, UserError):
        return str(err) or type(err).__name__, int(getattr(err, "exit_code", 2))
    if isinstance(err, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume", 130
    if is_communication_error(err):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"lost contact with another process of the run (its process or node may have ended): {first}", 1
    return f"internal error: {type(err).__name__}: {err}", 1


def is_communication_error(err: BaseException) -> bool:
    """A collective that failed because another process went away (gloo/NCCL errors)."""
    text = str(err).lower()
    return isinstance(err, torch.distributed.DistError) or (isinstance(err, RuntimeError) and
                                                            ("gloo" in text or "nccl" in text))


def _finish_children(children: list[subprocess.Popen], grace: float) -> None:
    codes = end_children(children, grace)
    bad = [(rank, code) for rank, code in enumerate(codes, start=1) if code != 0]
    if bad:
        rank, code = bad[0]
        raise RunStopped(f"local rank {rank} ended with {exit_text(code)} after its work was done", 1)


def _destroy_process_group() -> None:
    """Destroy the process group now, while the interpreter is whole."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
