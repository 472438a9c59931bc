"""Test session set-up and fixtures. Shared code lives in ``tests/helpers/``."""

from __future__ import annotations

import os

import pytest
from helpers.cli import REPO, SHARED, assert_user_error, run_wealy, run_wealy_process  # noqa: F401 (re-exported)
from helpers.stores import make_store  # noqa: F401 (re-exported)

# Keep the 2-core machine responsive when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def wealy():
    return run_wealy


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with the hub cache and the imported-models directory in tmp_path."""
    from huggingface_hub import constants as hf_constants

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "WEALY_MODELS_DIR": str(tmp_path / "models")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return env


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """A small csv dataset, its feature store and a saved model (helpers.evaluation)."""
    from helpers.evaluation import build_evaluation_setup

    return build_evaluation_setup(tmp_path_factory.mktemp("eval"))
