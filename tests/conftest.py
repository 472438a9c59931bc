"""Shared test helpers: run the real `wealy` CLI in a subprocess, build small real stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Keep the 2-core machine responsive when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_wealy(*args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m wealy_cli ARGS` as a real process (``env`` values of None unset a variable)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "wealy_cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def wealy():
    return run_wealy


def make_store(directory: Path, items: dict[str, np.ndarray], dim: int, **attrs) -> Path:
    """A real store with the given items (keys '<clique>/<version>')."""
    from wealy_cli.core.store import StoreWriter

    with StoreWriter(directory, dim, settings={"test": True}) as writer:
        for key, array in items.items():
            clique, _, version = key.partition("/")
            writer.add(key, array, clique=clique, version=version, **attrs)
    return directory
