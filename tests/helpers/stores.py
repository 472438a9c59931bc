"""Small real stores for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_store(directory: Path, items: dict[str, np.ndarray], dim: int, **attrs) -> Path:
    """A real store with the given items (keys '<clique>/<version>')."""
    from wealy_cli.core.store import StoreWriter

    with StoreWriter(directory, dim, settings={"test": True}) as writer:
        for key, array in items.items():
            clique, _, version = key.partition("/")
            writer.add(key, array, clique=clique, version=version, **attrs)
    return directory
