"""Running the real `wealy` CLI from tests: in this process (fast), or as a real process where a
test needs one."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


@dataclass
class Result:
    """What a `wealy` run gave: like subprocess.CompletedProcess."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_wealy(*args: object, env: dict[str, str | None] | None = None, cwd: Path | None = None) -> Result:
    """Run `wealy ARGS` through the CLI's entry point in this process: same parsing, settings,
    error handling and exit codes as the installed command, without a new Python starting.
    WEALY_* variables of the test environment are hidden; ``env`` values of None unset one."""
    from wealy_cli.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with _environment(env), _directory(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Result(argv, code, out.getvalue(), err.getvalue())


def run_wealy_process(*args: object, env: dict[str, str | None] | None = None, cwd: Path | None = None,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m wealy_cli ARGS` as a real process: for what needs one (several worker
    processes, kill signals, environment read at import time)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "wealy_cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


@contextlib.contextmanager
def _environment(env: dict[str, str | None] | None):
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("WEALY_")]:
        del os.environ[key]
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _directory(cwd: Path | None):
    before = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)


def assert_user_error(proc: Result | subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr starting with "error:", no traceback, naming ``fragments``."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
