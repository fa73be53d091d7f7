"""Shared fixtures: random-init tiny models, written once per test session, and a Cascade on them.

Tiny models go through exactly the loading path real checkpoints use (hyfunc.models.bundle),
so any test can run the whole engine without a model hub. Folders add their own conftest for
anything specific to them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory written by hyfunc.models.tiny.write_tiny_models (seed 0), shared by the session.

    Treat it as read-only: tests that need an index of their own pass an index_dir under tmp_path.
    """
    from hyfunc.models.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models") / "models", seed=0)


@pytest.fixture
def tiny_config(tiny_models_dir: Path, tmp_path: Path):
    """The default config pointed at the tiny models, with a per-test function index directory."""
    from hyfunc.config import load_config

    config = load_config(overrides={"models.dir": str(tiny_models_dir)})
    config.cascade.index_dir = str(tmp_path / "index")
    return config


@pytest.fixture
def cascade(tiny_config):
    """A freshly loaded Cascade on the tiny models (loading them takes well under a second)."""
    from hyfunc.cascade import Cascade

    return Cascade.load(tiny_config)
