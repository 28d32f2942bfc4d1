"""Test-wide settings: offline hub, W&B off, the bundled data beside the repo."""

from __future__ import annotations

import os

# Set before transformers / wandb are imported anywhere: an unreachable hub costs ~50 s per attempt.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path

import pytest

from mwp.config import register_resolvers
from mwp.paths import default_data_dir, default_models_dir
from mwp.runtime import set_env_defaults

# What the `mwp` entry point does before Hydra composes: nothing in mwp does it at import.
set_env_defaults()
register_resolvers()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not path.is_dir():
        pytest.fail(f"bundled data not found at {path}; put shared/ beside the repo or set MWP_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def flan_t5_dir() -> Path:
    return default_models_dir() / "flan-t5-small"


@pytest.fixture(autouse=True)
def stage_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own stage cache (`cache.dir` defaults to $MWP_STAGE_CACHE): no test reuses another's outputs."""
    path = tmp_path_factory.mktemp("stage-cache")
    monkeypatch.setenv("MWP_STAGE_CACHE", str(path))
    return path
