"""Where bundled data and models live: one setting each, defaulting to the `shared/` folder beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    for candidate in (REPO_ROOT.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"):
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared"


def default_data_dir() -> Path:
    """`$MWP_DATA_DIR`, else `../shared/data` beside the repository."""
    env = os.environ.get("MWP_DATA_DIR")
    return Path(env) if env else _shared() / "data"


def default_models_dir() -> Path:
    """`$MWP_MODELS_DIR`, else `../shared/models` beside the repository."""
    env = os.environ.get("MWP_MODELS_DIR")
    return Path(env) if env else _shared() / "models"


def user_cache_dir() -> Path:
    """`$MWP_CACHE_DIR`, else `~/.cache/mwp`: converted models (`models/`) and teacher completions (`teacher/`)."""
    env = os.environ.get("MWP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mwp"
