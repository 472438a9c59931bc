"""Several 'nodes' on loopback: one real ``torchrun`` per node (``--nnodes N --nproc-per-node 1``),
started together, each running ``python -m wealy_cli ...``: how a user runs wealy on N machines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.cli import REPO


@dataclass
class Node:
    """One node's torchrun: its return code and output (the worker's and torchrun's own)."""

    rank: int
    process: subprocess.Popen
    out: Path
    err: Path
    ended: float = 0.0  # time.monotonic() when it was seen to end

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def errors(self) -> list[str]:
        """The worker's own error lines (torchrun's report comes after them)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def worker_exit_code(self) -> int | None:
        """The wealy process's exit code as torchrun reports it (0 when torchrun succeeded)."""
        if self.returncode == 0:
            return 0
        found = re.search(r"exitcode\s*:\s*(-?\d+)", self.stderr)
        return int(found[1]) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(args: Sequence[Sequence[object]], logs: Path, env: dict[str, str] | None = None) -> list[Node]:
    """Start one torchrun per entry of ``args`` (that node's wealy arguments), in its own session."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    full_env.update(env or {})
    logs.mkdir(parents=True, exist_ok=True)
    nodes = []
    for rank, node_args in enumerate(args):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(args)), "--nproc-per-node", "1",
                   "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "wealy_cli", *map(str, node_args)]
        out, err = logs / f"node{rank}.out", logs / f"node{rank}.err"
        with open(out, "w") as o, open(err, "w") as e:
            process = subprocess.Popen(command, stdout=o, stderr=e, env=full_env, cwd=REPO, start_new_session=True)
        nodes.append(Node(rank, process, out, err))
    return nodes


def wait_nodes(nodes: list[Node], timeout: float = 300, poll: Callable[[], None] | None = None) -> list[Node]:
    """Wait for every node (calling ``poll`` meanwhile); kill them all if they take over ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(n.process.poll() is None for n in nodes):
        for n in nodes:
            if n.process.returncode is not None and not n.ended:
                n.ended = time.monotonic()
        if time.monotonic() > deadline:
            for n in nodes:
                kill_node(n)
            raise AssertionError(f"nodes still running after {timeout} s")
        if poll is not None:
            poll()
        time.sleep(0.05)
    for n in nodes:
        n.ended = n.ended or time.monotonic()
    return nodes


def run_nodes(args: Sequence[Sequence[object]], logs: Path, env: dict[str, str] | None = None,
              timeout: float = 300, poll: Callable[[], None] | None = None) -> list[Node]:
    return wait_nodes(start_nodes(args, logs, env), timeout, poll)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in their own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_node(node: Node) -> None:
    """SIGKILL a node's torchrun and its workers at once: the node dies."""
    for pid in process_tree(node.process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.process.wait()
